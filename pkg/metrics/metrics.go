// Package metrics exports the node driver's Prometheus metrics: the disks
// by status and their bytes (read from the inventory at each scrape), CSI
// calls, device operations (mkfs, mount, wipe), cleanup progress and
// failures, ECS API calls and state saves. Every metric is on a registry of
// its own and carries the node's name as the label node.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// Namespace prefixes every metric name.
const Namespace = "localdisk"

// Metrics holds the driver's metrics. Its methods are safe for concurrent
// use; a nil *Metrics records nothing.
type Metrics struct {
	reg  *prometheus.Registry
	node prometheus.Registerer // reg, with the node label

	csiCalls        *prometheus.CounterVec
	csiSeconds      *prometheus.HistogramVec
	deviceSeconds   *prometheus.HistogramVec
	cleanupFailures *prometheus.CounterVec
	ecsRequests     *prometheus.CounterVec
	stateSeconds    *prometheus.HistogramVec
}

// New registers the metrics for node, and the Go and process collectors,
// on a registry of their own. The disk metrics come with CollectDisks.
func New(node string) *Metrics {
	reg := prometheus.NewRegistry()
	r := prometheus.WrapRegistererWith(prometheus.Labels{"node": node}, reg)
	m := &Metrics{
		reg: reg, node: r,
		csiCalls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "csi_operations_total",
			Help: "CSI calls served, by method and gRPC status code."}, []string{"method", "grpc_code"}),
		csiSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "csi_operation_duration_seconds",
			Help:    "Time to serve a CSI call, by method and gRPC status code.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"method", "grpc_code"}),
		deviceSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "device_operation_duration_seconds",
			Help: "Time of a device operation: mkfs and mount (kind: file system type), bind (of a staged volume or a " +
				"block device), wipe (kind: cleanup policy); by result (success, error).",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 4 * 3600, 12 * 3600}},
			[]string{"operation", "kind", "result"}),
		cleanupFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "cleanup_failures_total",
			Help: "Disk cleanups that failed (each is retried), by cleanup policy."}, []string{"policy"}),
		ecsRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "ecs_api_requests_total",
			Help: "ECS OpenAPI requests (each try), by action and outcome: success, throttled or error."}, []string{"action", "outcome"}),
		stateSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "state_save_duration_seconds",
			Help:    "Time to save the node state record crash-safely (write, fsync, rename, fsync), by result.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}}, []string{"result"}),
	}
	r.MustRegister(m.csiCalls, m.csiSeconds, m.deviceSeconds, m.cleanupFailures, m.ecsRequests, m.stateSeconds)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// CollectDisks exports the disk metrics, read from snap at every scrape.
func (m *Metrics) CollectDisks(snap Snapshotter) {
	m.node.MustRegister(&diskCollector{snap: snap, now: time.Now})
}

// Registry is where the metrics are registered; for tests and extra
// collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// UnaryInterceptor counts and times every CSI call.
func (m *Metrics) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		if m != nil {
			method, code := path.Base(info.FullMethod), status.Code(err).String()
			m.csiCalls.WithLabelValues(method, code).Inc()
			m.csiSeconds.WithLabelValues(method, code).Observe(time.Since(start).Seconds())
		}
		return resp, err
	}
}

// DeviceOperation records the duration of a device operation.
func (m *Metrics) DeviceOperation(op, kind string, d time.Duration, err error) {
	if m != nil {
		m.deviceSeconds.WithLabelValues(op, kind, result(err)).Observe(d.Seconds())
	}
}

// CleanupFailed counts a failed cleanup of disk d.
func (m *Metrics) CleanupFailed(d state.Disk, _ error) {
	if m != nil {
		m.cleanupFailures.WithLabelValues(d.CleanupPolicy).Inc()
	}
}

// Changed is part of inventory.Observer: the disk metrics are read at
// every scrape.
func (m *Metrics) Changed() {}

var _ inventory.Observer = (*Metrics)(nil)

// ECSRequest counts one try of an ECS API call.
func (m *Metrics) ECSRequest(action, outcome string) {
	if m != nil {
		m.ecsRequests.WithLabelValues(action, outcome).Inc()
	}
}

// ECSRequestFunc is ECSRequest as a function, nil for nil Metrics (no
// metrics: nothing to call).
func (m *Metrics) ECSRequestFunc() func(action, outcome string) {
	if m == nil {
		return nil
	}
	return m.ECSRequest
}

// StateSaved records a save of the node state.
func (m *Metrics) StateSaved(d time.Duration, err error) {
	if m != nil {
		m.stateSeconds.WithLabelValues(result(err)).Observe(d.Seconds())
	}
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "success"
}

// Serve answers /metrics on addr (host:port) until ctx ends. It returns
// once the listener is open, or with the error that kept it from opening.
func (m *Metrics) Serve(ctx context.Context, addr string) (net.Addr, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: klogErrors{}, MaxRequestsInFlight: 4, Timeout: 30 * time.Second}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "Metrics server stopped", "address", lis.Addr().String())
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	klog.InfoS("Serving metrics", "address", lis.Addr().String(), "path", "/metrics")
	return lis.Addr(), nil
}

type klogErrors struct{}

func (klogErrors) Println(v ...any) { klog.ErrorS(nil, "Metrics scrape", "err", v) }
