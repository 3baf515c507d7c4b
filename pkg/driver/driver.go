// Package driver serves the CSI Identity, Controller and Node services of one
// node on one gRPC endpoint. It validates arguments, takes per-volume in-flight
// locks, calls the inventory and the mounter, and is the only place that turns
// errors into gRPC status codes.
package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
)

// Config wires a Driver.
type Config struct {
	// Name is the CSI driver name, e.g. localdisk.csi.alibabacloud.com.
	Name string
	// Version is reported by GetPluginInfo.
	Version string
	// NodeID is this node's ID (the Kubernetes node name).
	NodeID string
	// Inventory allocates and tracks this node's disks.
	Inventory *inventory.Inventory
	// Mounter formats, mounts and measures.
	Mounter mounter.Interface
	// StartWait is how long a volume call that arrives while the inventory
	// is still starting waits for it (never past the call's deadline)
	// before it answers UNAVAILABLE; 0 answers at once. The kubelet's
	// registration asks NodeGetInfo as soon as the socket exists, and a
	// failed registration restarts the registrar.
	StartWait time.Duration
	// Interceptors run around every call, outside the driver's own (for
	// metrics).
	Interceptors []grpc.UnaryServerInterceptor
	// Refusals, when set, hears of the volumes the node refuses to stage
	// or publish for safety, and of those whose filesystem turned
	// read-only (for events on their PV and claim). It must not block.
	Refusals VolumeNotifier
}

// VolumeNotifier hears of a volume the node refuses to serve for safety,
// or whose filesystem went wrong, and why.
type VolumeNotifier interface {
	VolumeRefused(v inventory.Volume, reason string)
	VolumeAbnormal(v inventory.Volume, reason string)
}

// Driver implements the CSI services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg   Config
	locks *inflight
}

// New returns a driver. The inventory may still be starting; until it is
// ready, Probe says so and volume RPCs wait for it up to StartWait, then
// answer UNAVAILABLE.
func New(cfg Config) (*Driver, error) {
	if cfg.Name == "" || cfg.NodeID == "" || cfg.Inventory == nil || cfg.Mounter == nil {
		return nil, errors.New("driver: name, node ID, inventory and mounter are required")
	}
	if !inventory.ValidNodeID(cfg.NodeID) {
		return nil, fmt.Errorf("driver: node ID %q is not a valid Kubernetes node name", cfg.NodeID)
	}
	return &Driver{cfg: cfg, locks: newInflight()}, nil
}

// TopologyKey is the one topology key of the driver: its value is the node name.
func (d *Driver) TopologyKey() string { return "topology." + d.cfg.Name + "/node" }

func (d *Driver) topology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{d.TopologyKey(): d.cfg.NodeID}}
}

// Register adds the three CSI services to a gRPC server.
func (d *Driver) Register(s *grpc.Server) {
	csi.RegisterIdentityServer(s, d)
	csi.RegisterControllerServer(s, d)
	csi.RegisterNodeServer(s, d)
}

// NewServer returns a gRPC server with the driver's services behind its
// interceptors (interceptors.go): every call is logged once, within a
// bounded size and with secrets stripped; a panicking handler fails its own
// call with INTERNAL and the server keeps serving; volume calls answer
// UNAVAILABLE until the inventory is ready.
func (d *Driver) NewServer() *grpc.Server {
	s := grpc.NewServer(grpc.ChainUnaryInterceptor(append(append([]grpc.UnaryServerInterceptor(nil), d.cfg.Interceptors...), d.interceptors()...)...))
	d.Register(s)
	return s
}

// toStatus maps the errors of lower packages to gRPC codes; it is the only
// place in the driver that chooses a code for an error it did not create.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, errInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, inventory.ErrNotReady):
		code = codes.Unavailable
	case errors.Is(err, inventory.ErrNotFound), errors.Is(err, errNotHere):
		code = codes.NotFound
	case errors.Is(err, inventory.ErrBusy):
		code = codes.Aborted
	case errors.Is(err, inventory.ErrExhausted):
		code = codes.ResourceExhausted
	case errors.Is(err, inventory.ErrExists), errors.Is(err, errConflict):
		code = codes.AlreadyExists
	case errors.Is(err, inventory.ErrInUse), errors.Is(err, inventory.ErrIdentityMismatch),
		errors.Is(err, inventory.ErrForeign), errors.Is(err, inventory.ErrDataGone),
		errors.Is(err, errPrecondition):
		code = codes.FailedPrecondition
	case errors.Is(err, inventory.ErrDeviceMissing):
		code = codes.NotFound
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}

var (
	// errNotHere: a path where the volume is not.
	errNotHere = errors.New("volume is not at this path")
	// errConflict: a stage or publish target already holds something else.
	errConflict = errors.New("target already used differently")
	// errPrecondition: the volume is not in the state the call needs.
	errPrecondition = errors.New("failed precondition")
)

// inflight holds the keys (volume IDs, or names during CreateVolume) that have
// an operation running. A second operation on a busy key is refused with
// ABORTED rather than queued, so one slow disk never stalls another.
type inflight struct {
	mu   sync.Mutex
	busy map[string]struct{}
}

func newInflight() *inflight { return &inflight{busy: map[string]struct{}{}} }

// acquire takes key or answers ABORTED; the returned function releases it.
func (l *inflight) acquire(key string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.busy[key]; ok {
		return nil, status.Errorf(codes.Aborted, "an operation on %.160q is already in progress", key)
	}
	l.busy[key] = struct{}{}
	return func() {
		l.mu.Lock()
		delete(l.busy, key)
		l.mu.Unlock()
	}, nil
}
