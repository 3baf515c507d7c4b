// Command ecs-localdisk-csi-controller is the cluster component of the ECS
// local disk CSI driver: one Deployment per cluster, with leader election,
// that recovers the StatefulSets whose node or disk is gone (confirmed with
// ECS). "ecs-localdisk-csi controller" runs it too.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/cli"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/kube"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/recovery"
)

// version is stamped at build time as the node driver's is.
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageHeader opens the controller's --help.
const usageHeader = "Usage: ecs-localdisk-csi controller [flags]\n\n" +
	"The cluster component: finds the volumes of nodes that are gone (confirmed with ECS) and, for classes with\n" +
	"onDiskLoss: recreate, deletes their claims, PVs and Pending pods so that StatefulSets recreate them.\n" +
	"Runs as one Deployment per cluster, with leader election.\n\nController flags:\n"

// run returns the exit code: 0 after a clean shutdown or after --help, 1
// on a runtime failure, 2 on bad flags. Its messages name the command as
// users run it, "ecs-localdisk-csi controller".
func run(args []string, stdout, stderr io.Writer) int {
	var o options.Controller
	fs := cli.NewFlagSet("ecs-localdisk-csi controller", o.AddFlags)
	if code, done := cli.Parse(fs, args, stdout, stderr, usageHeader); done {
		return code
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
	kcfg, err := kube.RESTConfig(o.Kubeconfig, o.KubeAPIQPS, o.KubeAPIBurst, "ecs-localdisk-csi/"+version+" (controller)")
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
		cfg.Cloud = &cloud.LazyAPI{CredentialsFile: o.CredentialsFile, RAMRole: o.RAMRole, Endpoint: o.ECSEndpoint, Region: o.Region, Metadata: md}
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
