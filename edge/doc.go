// Package edge is Meridian's public entry point (`meridian edge`): it
// terminates HTTP and HTTPS for every app's host name
// (<app>-<org>.<domain>), maps host and path prefix to a service's route,
// and sends each request to the closest healthy instance.
//
// Routing state comes from the regions, not from the global control
// plane: the edge lists the open regions from global at start (and every
// RegionRefresh; the list is cached on disk), then subscribes to every
// region's endpoint feed directly over mutual TLS with its edge
// certificate. The merged routing table is immutable and swapped
// atomically on every change, and persisted to a snapshot on disk (atomic
// write), so the edge keeps routing through a global outage and after its
// own restart with global down. A feed that drops, goes silent or sends
// garbage leaves that region's last good state in use.
//
// The edge reaches instances only through the node proxies of their
// machines (the agent's, at the mesh port the feed names), over TLS 1.3
// with its edge certificate (ALPN meridian-edge/1, meshwire): the machine
// must present its own certificate, issued by its region's CA, and the
// proxy delivers the connection to the instance's declared port, one
// instance connection per TLS connection, so the edge's keep-alive pools
// are pools of TLS connections. Nothing goes to an instance in clear.
//
// Choice of instance: regions are ranked — those whose probe timed out
// last; then by measured round-trip time to the region's API (the minimum
// of the last 8 probes, in buckets of Config.RTTTolerance so that
// loopback-close regions tie), ties and unmeasured regions by the
// great-circle distance between the edge's and the region's coordinates.
// In the best region with an available instance, power of two choices on
// outstanding requests among healthy, non-ejected instances. Passive
// failure detection ejects an instance at once on a connect failure or a
// response timeout, after 3 consecutive transport errors or Config.Eject5xx
// consecutive 5xx answers, for EjectBase doubling up to EjectMax; active
// health comes from the feed. When no healthy instance is left anywhere,
// instances the feed calls unhealthy are tried, then ejected ones, rather
// than answering a certain 503.
//
// Retries: a request whose attempt could not connect, and an idempotent
// request (RFC 9110 methods, or an Idempotency-Key) whose attempt failed
// before a response started, is retried on another instance — at most two
// attempts per region, then the next region — within MaxAttempts and
// RetryWindow. When a region's probe times out (a blackholed link) while
// another region answers, the exchanges waiting on it for longer than half
// a probe timeout are cut and retried elsewhere; those do not count
// against MaxAttempts. Everything else gets a clear 502, 503 or 504 with
// an X-Meridian-Error reason header, never a hang: connections take at
// most ConnectTimeout and HandshakeTimeout, response headers at most
// ResponseHeaderTimeout.
//
// HTTP: HTTP/1.1 and HTTP/2 (h2c with prior knowledge on the plain
// listener, ALPN on TLS). Connections start in the front lane (front.go):
// requests parsed with http.ReadRequest and answered by a small HTTP/1.1
// writer, while they are bodyless HTTP/1.1; at the first other request
// the connection is handed to net/http's server with that request's bytes
// replayed (HTTPS clients that negotiate h2 are handed over after the
// handshake). A request without a body
// or upgrade takes the fast path: the handler's goroutine writes it over a kept-alive
// HTTP/1.1 connection from the instance's own pool and copies the answer
// back (half the CPU of httputil.ReverseProxy over http.Transport).
// Requests with bodies, WebSockets and HTTP/2 instances go through
// httputil.ReverseProxy. Streaming answers are flushed as they come;
// X-Forwarded-For/Proto/Host and X-Request-Id (the edge's own id, logged
// and returned to the client; a client's id is passed on as
// X-Client-Request-Id) are set; header and body
// sizes and read times are bounded; Close shuts down gracefully, finishing
// requests in flight. Prometheus metrics (per org, app, service, region
// and status code), the routing state (/v1/state) and the Go profiler are
// served on a separate admin listener.
package edge
