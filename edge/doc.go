// Package edge is Meridian's public entry point (`meridian edge`): it
// terminates HTTP and HTTPS for every app's host name
// (<app>-<org>.<domain>), maps host and path prefix to a service's route,
// and sends each request to the closest healthy instance.
//
// Routing state comes from the regions, not from the global control
// plane: the edge lists the open regions from global at start (and every
// so often; the list is cached on disk), then subscribes to every region's
// endpoint feed directly over mutual TLS with its edge certificate. The
// merged routing table is immutable and swapped atomically on every
// change, and persisted to a snapshot on disk (atomic write), so the edge
// keeps routing through a global outage and after its own restart with
// global down. A feed that drops or sends garbage leaves that region's
// last good state in use.
//
// Choice of instance: the region is chosen by rank — regions whose probes
// time out (a blackholed link) last; then measured round-trip time to the
// region's API, in buckets of Config.RTTTolerance, ties broken by the
// great-circle distance between the edge's and the region's coordinates
// (which also stands in for regions not measured yet). Inside a region,
// power of two choices on outstanding requests among healthy, non-ejected
// instances. Passive failure detection ejects an instance at once on a
// connect failure or a response timeout, after 3 consecutive transport
// errors or Config.Eject5xx consecutive 5xx answers, for EjectBase doubling
// up to EjectMax; active health comes from the feed. A request whose
// attempt could not connect, and an idempotent request whose attempt failed
// before a response started (including attempts cut because their region
// stopped answering probes), is retried on another instance, at most two
// per region, then in the next region, within MaxAttempts and
// RetryWindow. Everything else gets a clear 502, 503 or 504 with an
// X-Meridian-Error reason header.
//
// HTTP: HTTP/1.1 and HTTP/2 (h2c with prior knowledge on the plain
// listener, ALPN on TLS), WebSockets and streaming responses pass through
// (net/http/httputil.ReverseProxy), X-Forwarded-For/Proto/Host and
// X-Request-Id are set, header and body sizes and read times are bounded,
// and Close shuts down gracefully, finishing requests in flight.
// Prometheus metrics (per org, app, service, region and status code) and
// the routing state are served on a separate admin listener.
package edge
