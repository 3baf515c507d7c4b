package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

// retainPod is a pod on node that mounts claim at /data and runs cmd.
func retainPod(name, node, claim, cmd string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: default}
spec:
  hostNetwork: true
  nodeSelector: {kubernetes.io/hostname: %[2]s}
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: %[5]s, imagePullPolicy: Never, command: [sh, -c, %[4]q], volumeMounts: [{name: data, mountPath: /data}]}
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: %[3]s}}
`, name, node, claim, cmd, cluster.BusyboxImage)
}

// TestRetainKeepsTheDisk: with a Retain class, deleting the claim keeps the
// disk Allocated with its data, and its LocalDisk says whose it was; the
// released PV bound to a new claim gives the data back to a new pod.
func TestRetainKeepsTheDisk(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e := startCluster(ctx, t, topology{real: disks(2, ssd)})
	node := e.real.Name
	e.apply(ctx, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: localdisk-retain}
provisioner: localdisk.csi.alibabacloud.com
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
parameters: {csi.storage.k8s.io/fstype: ext4, cleanupPolicy: zero}`)
	e.apply(ctx, `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: keep, namespace: default}
spec: {accessModes: [ReadWriteOnce], storageClassName: localdisk-retain, resources: {requests: {storage: 512Mi}}}`)
	e.apply(ctx, retainPod("writer", node, "keep", "echo kept-data > /data/marker && sync && sleep 1000000"))
	var pv string
	e.waitFor(ctx, "the writer running and its disk Allocated to default/keep", func() error {
		p := e.get(ctx, "pod", "-n", "default", "writer")
		if !p.running() {
			return fmt.Errorf("writer %s", p.Status.Phase)
		}
		d, ok := e.diskOfClaim(ctx, "keep")
		if !ok || d.Status.Phase != "Allocated" || d.Status.Volume == nil {
			return fmt.Errorf("LocalDisk of keep: %+v", d.Status)
		}
		pv = d.Status.Volume.PersistentVolume
		return nil
	})
	if out, err := e.cp.Exec(ctx, "default", "writer", "cat", "/data/marker"); err != nil || strings.TrimSpace(out) != "kept-data" {
		t.Fatalf("writer reads %q, %v", out, err)
	}
	kept, _ := e.diskOfClaim(ctx, "keep")

	e.kubectl(ctx, "", "delete", "pod", "-n", "default", "writer")
	e.kubectl(ctx, "", "delete", "pvc", "-n", "default", "keep")
	e.waitFor(ctx, "the PV Released", func() error {
		if got := e.get(ctx, "pv", pv).Status.Phase; got != "Released" {
			return fmt.Errorf("PV %s is %s", pv, got)
		}
		return nil
	})
	// Long enough for a cleanup to have started, had one been asked.
	time.Sleep(5 * time.Second)
	d, ok := e.diskOn(ctx, node, kept.Status.Device)
	if !ok || d.Status.Phase != "Allocated" || d.Status.Claim != "default/keep" || d.Status.Volume == nil || d.Status.Volume.PersistentVolume != pv {
		t.Fatalf("the retained disk's LocalDisk: %+v", d.Status)
	}

	// The released PV, freed of its old claim, bound to a new one.
	e.apply(ctx, fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: again, namespace: default}
spec: {accessModes: [ReadWriteOnce], storageClassName: localdisk-retain, volumeName: %s, resources: {requests: {storage: 512Mi}}}`, pv))
	e.kubectl(ctx, "", "patch", "pv", pv, "--type=json", "-p", `[{"op":"remove","path":"/spec/claimRef"}]`)
	e.apply(ctx, retainPod("reader", node, "again", "sleep 1000000"))
	e.waitFor(ctx, "the reader running on the retained disk", func() error {
		if p := e.get(ctx, "pod", "-n", "default", "reader"); !p.running() {
			return fmt.Errorf("reader %s", p.Status.Phase)
		}
		return nil
	})
	if out, err := e.cp.Exec(ctx, "default", "reader", "cat", "/data/marker"); err != nil || strings.TrimSpace(out) != "kept-data" {
		t.Fatalf("the new claim reads %q, %v; want the retained data", out, err)
	}
}
