package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/leaderelection"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/recovery"
)

// runController is "ecs-localdisk-csi controller": the cluster component.
// Exit codes as run's.
func runController(args []string, stdout, stderr io.Writer) int {
	var o options.Controller
	fs := flag.NewFlagSet("ecs-localdisk-csi controller", flag.ContinueOnError)
	o.AddFlags(fs)
	logging := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(logging)
	logging.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, "klog: "+f.Usage) })
	fs.Usage = func() {}
	fs.SetOutput(stderr)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printUsage(fs, stdout, "Usage: ecs-localdisk-csi controller [flags]\n\n"+
			"The cluster component: finds the volumes of nodes that are gone (confirmed with ECS) and, for classes with\n"+
			"onDiskLoss: recreate, deletes their claims, PVs and Pending pods so that StatefulSets recreate them.\n"+
			"Runs as one Deployment per cluster, with leader election.\n\nController flags:\n")
		return 0
	case err != nil:
		fmt.Fprintln(stderr, "Run ecs-localdisk-csi controller --help for the flags.")
		return 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "unexpected arguments: %q\n", fs.Args())
		return 2
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintf(stderr, "invalid options:\n%v\n", err)
		return 2
	}
	defer klog.Flush()
	if err := control(o); err != nil {
		klog.ErrorS(err, "Controller failed")
		return 1
	}
	return 0
}

// control runs the controller until SIGINT or SIGTERM, while it holds the
// leader lease.
func control(o options.Controller) error {
	kcfg, err := restConfig(o.Kubeconfig, o.KubeAPIQPS, o.KubeAPIBurst, "controller")
	if err != nil {
		return fmt.Errorf("Kubernetes API: %w", err)
	}
	core, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(kcfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: core.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	cfg := recovery.Config{DriverName: o.DriverName, Namespace: o.Namespace, Core: core, Dynamic: dyn,
		Recorder:    broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "ecs-localdisk-csi-controller"}),
		GracePeriod: o.NodeLossGracePeriod, Interval: o.Interval, EventInterval: o.CloudEventInterval, AcceptDiskEvents: o.AcceptDiskEvents}
	if o.Cloud == "ecs" {
		md := cloud.NewMetadata(o.MetadataEndpoint)
		cfg.Cloud = &lazyAPI{credentialsFile: o.CredentialsFile, ramRole: o.RAMRole, endpoint: o.ECSEndpoint, region: o.Region, md: md}
		mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cfg.Region = o.Region
		if in, err := md.Instance(mctx); err == nil {
			cfg.SelfInstance = in.ID
			if cfg.Region == "" {
				cfg.Region = in.Region
			}
		} else {
			klog.InfoS("The controller's own instance is unknown (no metadata server); the Ready nodes' instances are the witnesses of ECS's answers", "err", err)
		}
		cancel()
		if cfg.Region == "" {
			klog.InfoS("The region is unknown (no --region, no metadata server): Nodes' providerIDs are not used, only the instances the node drivers recorded")
		}
	}
	ctrl := recovery.New(cfg)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	run := func(ctx context.Context) {
		if err := ctrl.Run(ctx); err != nil {
			klog.ErrorS(err, "Controller stopped")
			klog.FlushAndExit(klog.ExitFlushTimeout, 1)
		}
	}
	var le interface{ Run() error }
	if o.LeaderElection {
		l := leaderelection.NewLeaderElection(core, o.DriverName+"-controller", run)
		ns := o.LeaderElectionNamespace
		if ns == "" {
			ns = o.Namespace
		}
		l.WithNamespace(ns)
		l.WithContext(ctx)
		l.WithReleaseOnCancel(true)
		l.PrepareHealthCheck(mux, leaderelection.DefaultHealthCheckTimeout)
		le = l
	} else {
		mux.HandleFunc(leaderelection.HealthCheckerAddress, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	}
	if o.HTTPEndpoint != "" {
		lis, err := net.Listen("tcp", o.HTTPEndpoint)
		if err != nil {
			return fmt.Errorf("--http-endpoint %s: %w", o.HTTPEndpoint, err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(lis)
		defer srv.Close()
		klog.InfoS("Serving health checks", "address", lis.Addr().String())
	}
	klog.InfoS("Controller starting", "driver", o.DriverName, "version", version, "cloud", o.Cloud, "leaderElection", o.LeaderElection)
	if le == nil {
		run(ctx)
		return nil
	}
	return le.Run()
}
