// Command ecs-localdisk-csi is the CSI driver that gives each volume one whole
// local disk of an ECS instance. One process serves Identity, Controller and
// Node on one socket; it runs once per node.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/driver"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

// run returns the exit code: 0 after a clean shutdown, 1 on a runtime
// failure, 2 on bad flags.
func run(args []string) int {
	fs := flag.NewFlagSet("ecs-localdisk-csi", flag.ContinueOnError)
	klog.InitFlags(fs)
	var o options.Options
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unexpected arguments: %q\n", fs.Args())
		return 2
	}
	if o.Version {
		fmt.Println(version)
		return 0
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "invalid options:\n%v\n", err)
		return 2
	}
	defer klog.Flush()
	if err := serve(o); err != nil {
		klog.ErrorS(err, "Driver failed")
		return 1
	}
	return 0
}

// newSource builds the disk source the options ask for.
func newSource(o options.Options, m *mounter.Real) (disk.Source, error) {
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
	cfg := cloud.SourceConfig{Metadata: md, API: &lazyAPI{opts: o, md: md}, Devices: devices, CachePath: cloud.CachePathIn(o.StateDir)}
	if o.SerialLessFallback {
		cfg.Fallback = &cloud.Fallback{StartWith: o.StartWith(), Pinner: cloud.DevicePinner{}}
	}
	return cloud.NewSource(cfg)
}

// serve runs the driver until SIGINT or SIGTERM. It first claims the state
// directory and the endpoint, so that a second driver on either fails before
// it touches a disk.
func serve(o options.Options) error {
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
	m := mounter.New()
	src, err := newSource(o, m)
	if err != nil {
		return err
	}
	if c, ok := src.(interface{ Close() }); ok {
		defer c.Close()
	}
	inv := inventory.New(inventory.Config{Node: o.NodeID, Source: src, Store: state.NewStore(o.StateDir), Mounter: m})
	defer inv.Stop()
	drv, err := driver.New(driver.Config{Name: o.DriverName, Version: version, NodeID: o.NodeID, Inventory: inv, Mounter: m})
	if err != nil {
		return err
	}
	srv := drv.NewServer()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	klog.InfoS("Serving", "endpoint", o.Endpoint, "driver", o.DriverName, "version", version, "node", o.NodeID)
	go func() {
		if err := inv.Start(ctx); err != nil {
			klog.ErrorS(err, "Disk inventory failed to start; the driver stays not ready", "node", o.NodeID)
			return
		}
		klog.InfoS("Ready", "node", o.NodeID, "managedDisks", inv.ManagedDisks())
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
