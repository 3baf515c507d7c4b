// Command ecs-localdisk-csi is the CSI driver that gives each volume one whole
// local disk of an ECS instance. One process serves Identity, Controller and
// Node on one socket; it runs once per node. "ecs-localdisk-csi controller"
// runs the cluster component, ecs-localdisk-csi-controller, in its place.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/cli"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/driver"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/kube"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/metrics"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// version and commit are stamped at build time with -ldflags
// "-X main.version=... -X main.commit=..." (make build reads VERSION); a
// plain go build says dev and takes the commit from the module's VCS stamp.
var (
	version = "dev"
	commit  = ""
)

// versionLine is what --version prints.
func versionLine() string { return cli.VersionLine("ecs-localdisk-csi", version, commit) }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the exit code: 0 after a clean shutdown or after --help or
// --version, 1 on a runtime failure, 2 on bad flags.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "controller" {
		return execController(args[1:], stderr)
	}
	var o options.Options
	if code, done := cli.Parse(newFlagSet(&o), args, stdout, stderr, usageHeader); done {
		return code
	}
	if o.Version {
		fmt.Fprintln(stdout, versionLine())
		return 0
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintf(stderr, "invalid options:\n%v\n", err)
		return 2
	}
	defer klog.Flush()
	if err := serve(o); err != nil {
		klog.ErrorS(err, "Driver failed")
		return 1
	}
	return 0
}

// newFlagSet is the driver's flags and klog's, in one set.
func newFlagSet(o *options.Options) *flag.FlagSet {
	return cli.NewFlagSet("ecs-localdisk-csi", o.AddFlags)
}

// usageHeader opens the driver's --help.
const usageHeader = "Usage: ecs-localdisk-csi --node-id=NODE --disk-source=static|ecs [flags]\n" +
	"       ecs-localdisk-csi controller [flags]   (the cluster component; --help for its flags)\n\n" +
	"The CSI driver of ECS local disks: one volume, one whole disk. Runs once per node.\n\nDriver flags:\n"

// newSource builds the disk source the options ask for.
// observers are the inventory's observers: the metrics, when they are on,
// and the LocalDisk mirror, once it exists.
func observers(met *metrics.Metrics, changes *mirrorChanges) inventory.Observer {
	if met == nil {
		return changes
	}
	return inventory.Observers{met, changes}
}

// mirrorChanges tells the LocalDisk mirror of the inventory's changes and
// of the driver's refusals, once there is a mirror.
type mirrorChanges struct{ mirror atomic.Pointer[kube.Mirror] }

func (c *mirrorChanges) StateSaved(time.Duration, error) {}
func (c *mirrorChanges) CleanupFailed(state.Disk, error) {}
func (c *mirrorChanges) Changed() {
	if m := c.mirror.Load(); m != nil {
		m.Changed()
	}
}

func (c *mirrorChanges) VolumeRefused(v inventory.Volume, reason string) {
	if m := c.mirror.Load(); m != nil {
		m.VolumeRefused(v, reason)
	}
}

func (c *mirrorChanges) VolumeAbnormal(v inventory.Volume, reason string) {
	if m := c.mirror.Load(); m != nil {
		m.VolumeAbnormal(v, reason)
	}
}

// interceptors are the gRPC interceptors around the driver's own.
func interceptors(met *metrics.Metrics) []grpc.UnaryServerInterceptor {
	if met == nil {
		return nil
	}
	return []grpc.UnaryServerInterceptor{met.UnaryInterceptor()}
}

func newSource(o options.Options, m *mounter.Real, met *metrics.Metrics) (disk.Source, error) {
	if o.DiskSource == "static" {
		return disk.NewStatic(disk.StaticConfig{Patterns: o.DevicePatterns(), Prober: m})
	}
	patterns := o.DevicePatterns()
	if len(patterns) == 0 {
		patterns = cloud.DefaultDevicePatterns
	}
	devices, err := disk.NewStatic(disk.StaticConfig{Patterns: patterns, Prober: m, SkipPartitions: true})
	if err != nil {
		return nil, err
	}
	md := cloud.NewMetadata(o.MetadataEndpoint)
	cfg := cloud.SourceConfig{Metadata: md, API: &cloud.LazyAPI{CredentialsFile: o.CredentialsFile, RAMRole: o.RAMRole, Endpoint: o.ECSEndpoint, Metadata: md, OnRequest: met.ECSRequestFunc()}, Devices: devices, CachePath: cloud.CachePathIn(o.StateDir)}
	if o.SerialLessFallback {
		cfg.Fallback = &cloud.Fallback{StartWith: o.StartWith(), Pinner: cloud.DevicePinner{}}
	}
	return cloud.NewSource(cfg)
}

// tuneGC sets the garbage collector's target to 50 unless GOGC is in the
// environment: the driver's live heap is about 1 MB, which Go's default
// (100) lets grow to a 4 MB heap all the same, and 50 to 2 MB. Collecting
// so small a heap costs microseconds. BenchmarkIdleRSS measured 1.3 MiB
// less idle memory.
func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(50)
	}
}

// serve runs the driver until SIGINT or SIGTERM. It first claims the state
// directory and the endpoint, so that a second driver on either fails before
// it touches a disk.
func serve(o options.Options) error {
	tuneGC()
	lock, err := state.LockDir(o.StateDir)
	if err != nil {
		return err
	}
	defer lock.Unlock() // last: after the inventory has stopped
	lis, err := driver.OpenEndpoint(o.Endpoint)
	if err != nil {
		return err
	}
	defer lis.Close() // removes the socket only while it is still ours
	rate, err := o.CleanupBytesPerSecond()
	if err != nil {
		return err
	}
	changes := &mirrorChanges{}
	var met *metrics.Metrics
	if o.MetricsAddress != "" {
		met = metrics.New(o.NodeID)
	}
	m := mounter.New()
	src, err := newSource(o, m, met)
	if err != nil {
		return err
	}
	if c, ok := src.(interface{ Close() }); ok {
		defer c.Close()
	}
	inv := inventory.New(inventory.Config{Node: o.NodeID, Source: src, Store: state.NewStore(o.StateDir), Mounter: met.Mounter(m), Observer: observers(met, changes),
		RequireDisks:           o.DiskSource == "static" && !o.AllowNoDisks,
		CleanupCheckpointEvery: o.CleanupCheckpointInterval, CleanupBytesPerSecond: rate,
		NoDisksHint: "until the node has recorded its disks (its first start, or after its state was lost) --devices must name only present, " +
			"usable local disks: correct it, or start with --allow-no-disks on a node that is expected to have no local disks"})
	defer inv.Stop()
	drv, err := driver.New(driver.Config{Name: o.DriverName, Version: version, NodeID: o.NodeID, Inventory: inv, Mounter: met.Mounter(m),
		StartWait: 30 * time.Second, Interceptors: interceptors(met), Refusals: changes})
	if err != nil {
		return err
	}
	srv := drv.NewServer()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if met != nil {
		met.CollectDisks(inv)
		if _, err := met.Serve(ctx, o.MetricsAddress); err != nil {
			return fmt.Errorf("--metrics-address %s: %w", o.MetricsAddress, err)
		}
	}
	kcfg, err := kubeConfig(o)
	if err != nil {
		return fmt.Errorf("Kubernetes API: %w", err)
	}
	if kcfg != nil {
		mirror, stopEvents, err := newMirror(ctx, kcfg, o.NodeID, inv)
		if err != nil {
			return fmt.Errorf("Kubernetes API: %w", err)
		}
		defer stopEvents()
		changes.mirror.Store(mirror)
		mirrorDone := make(chan struct{})
		go func() { defer close(mirrorDone); mirror.Run(ctx) }()
		defer func() { <-mirrorDone }() // ctx ends first: stop below
		defer stop()
	} else {
		klog.InfoS("No Kubernetes API configured (--kubeconfig, or a pod's service account): LocalDisk objects and events are off")
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	klog.InfoS("Serving", "endpoint", o.Endpoint, "driver", o.DriverName, "version", version, "node", o.NodeID)
	go func() {
		if err := inv.Start(ctx); err != nil {
			klog.ErrorS(err, "Disk inventory failed to start; the driver stays not ready", "node", o.NodeID)
			return
		}
		klog.InfoS("Ready", "node", o.NodeID, "managedDisks", inv.ManagedDisks())
		checkLost(ctx, drv)
		changes.Changed()
		rescan(ctx, inv, drv, o.DiskRescanInterval)
	}()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	klog.InfoS("Shutting down")
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	if err := <-serveErr; err != nil && !errors.Is(err, context.Canceled) {
		klog.V(2).InfoS("Server stopped", "err", err)
	}
	return nil
}
