package main

import (
	"context"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/driver"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/kube"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"
)

// kubeConfig is the Kubernetes API's client configuration: --kubeconfig,
// else the pod's service account; nil outside a cluster without the flag.
func kubeConfig(o options.Options) (*rest.Config, error) {
	if o.Kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, nil
	}
	return kube.RESTConfig(o.Kubeconfig, o.KubeAPIQPS, o.KubeAPIBurst, "ecs-localdisk-csi/"+version+" (node "+o.NodeID+")")
}

// newMirror builds the LocalDisk mirror and its event recorder; the
// returned stop flushes and ends the recorder.
func newMirror(ctx context.Context, cfg *rest.Config, node string, inv *inventory.Inventory) (*kube.Mirror, func(), error) {
	core, err := kube.NewCoreClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(core.EventSink())
	recorder := broadcaster.NewRecorder(kube.Scheme, corev1.EventSource{Component: "ecs-localdisk-csi", Host: node})
	m := kube.NewMirror(kube.MirrorConfig{Node: node, Dynamic: dyn, Core: core, Inventory: inv, Recorder: recorder})
	return m, broadcaster.Shutdown, nil
}

// checkLost looks for volumes whose data is gone (CheckLost).
func checkLost(ctx context.Context, drv *driver.Driver) {
	if _, err := drv.CheckLost(ctx); err != nil && ctx.Err() == nil {
		klog.ErrorS(err, "Looking for volumes whose disk reads blank failed")
	}
}

// rescan discovers the node's disks again every interval until ctx ends,
// and then looks for volumes whose data is gone.
func rescan(ctx context.Context, inv *inventory.Inventory, drv *driver.Driver, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := inv.Refresh(ctx); err != nil && ctx.Err() == nil {
				klog.ErrorS(err, "Rediscovering the node's disks failed; retrying at the next rescan", "retryIn", interval)
			}
			checkLost(ctx, drv)
		}
	}
}
