package edge

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the edge's Prometheus metrics, in its own registry.
type metrics struct {
	reg *prometheus.Registry

	requests  *prometheus.CounterVec   // org, app, service, region, code
	duration  *prometheus.HistogramVec // org, app, service, region
	inflight  prometheus.Gauge
	attempts  *prometheus.CounterVec // region, result
	retries   *prometheus.CounterVec // region (of the failed attempt)
	ejections *prometheus.CounterVec // region, reason

	feedUpdates   *prometheus.CounterVec // region
	feedErrors    *prometheus.CounterVec // region
	feedConnected *prometheus.GaugeVec   // region
	rtt           *prometheus.GaugeVec   // region
	unreachable   *prometheus.GaugeVec   // region
	endpoints     prometheus.Gauge
	routes        prometheus.Gauge
	snapshots     *prometheus.CounterVec // result
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_edge_requests_total",
		Help: "Requests answered, by app, service, region that answered (empty: none) and status code (499: the client went away)."},
		[]string{"org", "app", "service", "region", "code"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meridian_edge_request_duration_seconds",
		Help:    "Time from a request's arrival to its response headers.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}},
		[]string{"org", "app", "service", "region"})
	m.inflight = prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_edge_requests_in_flight", Help: "Requests being served."})
	m.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_edge_upstream_attempts_total",
		Help: "Attempts to reach an instance, by region and result (ok, connect_error, timeout, error, region_cut)."},
		[]string{"region", "result"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_edge_retries_total",
		Help: "Requests retried after a failed attempt, by the failed attempt's region."}, []string{"region"})
	m.ejections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_edge_ejections_total",
		Help: "Instances ejected by passive failure detection, by region and reason."}, []string{"region", "reason"})
	m.feedUpdates = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_edge_feed_updates_total",
		Help: "Endpoint feeds received, by region."}, []string{"region"})
	m.feedErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_edge_feed_errors_total",
		Help: "Endpoint feed streams that broke or sent garbage, by region."}, []string{"region"})
	m.feedConnected = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meridian_edge_feed_connected",
		Help: "1 while the region's feed stream is up."}, []string{"region"})
	m.rtt = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meridian_edge_region_rtt_seconds",
		Help: "Measured round-trip time to the region's API (0: not measured)."}, []string{"region"})
	m.unreachable = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meridian_edge_region_unreachable",
		Help: "1 while the region's probes time out."}, []string{"region"})
	m.endpoints = prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_edge_endpoints", Help: "Healthy endpoints in the routing table."})
	m.routes = prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_edge_routes", Help: "Routes (host and path prefix) in the routing table."})
	m.snapshots = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_edge_snapshot_writes_total",
		Help: "Routing snapshots written to disk, by result."}, []string{"result"})
	m.reg.MustRegister(m.requests, m.duration, m.inflight, m.attempts, m.retries, m.ejections, m.feedUpdates, m.feedErrors,
		m.feedConnected, m.rtt, m.unreachable, m.endpoints, m.routes, m.snapshots,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
