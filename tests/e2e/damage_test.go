package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

// volumeCondition asks the node's driver for the volume's condition, as
// the kubelet does.
func volumeCondition(ctx context.Context, t *testing.T, n *cluster.Node, volumeID, path string) *csi.VolumeCondition {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+n.Socket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := csi.NewNodeClient(conn).NodeGetVolumeStats(cctx, &csi.NodeGetVolumeStatsRequest{VolumeId: volumeID, VolumePath: path})
	if err != nil {
		t.Fatalf("NodeGetVolumeStats %s: %v", volumeID, err)
	}
	return r.GetVolumeCondition()
}

// diskIndex is the index of the node's loop device whose ECS disk is id.
func diskIndex(t *testing.T, n *cluster.Node, id string) int {
	t.Helper()
	for i := range n.Loops {
		if n.DiskID(i) == id {
			return i
		}
	}
	t.Fatalf("%s has no disk %s", n.Name, id)
	return -1
}

// TestDamagedDisk: ECS's damaged-disk events, read by the cluster
// component from the fake ECS, on the real API server. For a class
// without opt-in, a damaged disk holding a replica's volume shows as
// Damaged in its LocalDisk, the volume's condition turns abnormal, the
// claim and the pod get events, and nothing is deleted or accepted. For a
// class with onDiskLoss: recreate, the claim is recreated and bound on
// another disk and its pod scheduled there; with --accept-disk-events the
// event is accepted once no volume uses the disk, and the disk ECS puts
// in its place joins as a free disk.
func TestDamagedDisk(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ssd := cluster.DiskSpec{SizeBytes: 2 * gib, Category: "local_ssd_pro"}
	e := startCluster(ctx, t, topology{fake: [][]cluster.DiskSpec{{ssd, ssd}, {ssd, ssd}, {ssd, ssd}}})
	if err := e.cp.StartController(ctx, cluster.ControllerConfig{GracePeriod: 10 * time.Second, AcceptDiskEvents: true}); err != nil {
		t.Fatal(err)
	}
	e.apply(ctx, lossClass("recreate", "recreate"))
	e.apply(ctx, lossClass("report", ""))
	e.apply(ctx, statefulSet("dmg", "recreate", 1, "1Gi"))
	e.apply(ctx, statefulSet("rep", "report", 1, "1Gi"))
	e.waitFor(ctx, "2 claims bound and 2 pods scheduled", func() error {
		d, r := e.claimsOf(ctx, "dmg"), e.claimsOf(ctx, "rep")
		if len(d.bound)+len(r.bound) != 2 || d.scheduled+r.scheduled != 2 {
			return fmt.Errorf("%d+%d bound, %d+%d scheduled", len(d.bound), len(r.bound), d.scheduled, r.scheduled)
		}
		return nil
	})
	uidD, pvD := e.volumeOf(ctx, "data-dmg-0")
	uidR, pvR := e.volumeOf(ctx, "data-rep-0")
	var ldD, ldR localDisk
	e.waitFor(ctx, "the LocalDisks of both volumes", func() error {
		var okD, okR bool
		ldD, okD = e.diskOfClaim(ctx, "data-dmg-0")
		ldR, okR = e.diskOfClaim(ctx, "data-rep-0")
		if !okD || !okR || ldD.Status.CloudDiskID == "" || ldR.Status.CloudDiskID == "" {
			return fmt.Errorf("LocalDisks %v %v", okD, okR)
		}
		return nil
	})
	nodeD, nodeR := e.fakeNode(ldD.Spec.Node), e.fakeNode(ldR.Spec.Node)

	t.Run("class without opt-in", func(t *testing.T) {
		if err := e.cp.InjectEvent(ctx, cluster.DiskEvent{ID: "e-rep", InstanceID: nodeR.InstanceID(), Type: "SystemMaintenance.IsolateErrorDisk",
			Status: "Inquiring", DiskID: ldR.Status.CloudDiskID, CanAccept: true, Reason: "local disk error detected"}); err != nil {
			t.Fatal(err)
		}
		e.waitFor(ctx, "the disk Damaged, and the claim and the pod told", func() error {
			d, ok := e.diskOfClaim(ctx, "data-rep-0")
			if !ok || d.Status.Phase != "Damaged" || !strings.Contains(d.Spec.Damaged, "e-rep") {
				return fmt.Errorf("LocalDisk %+v", d)
			}
			for _, o := range [][2]string{{"data-rep-0", uidR}, {"rep-0", ""}} {
				if r := e.eventsFor(ctx, o[0], o[1]); !slices.Contains(r, "LocalDiskDamaged") {
					return fmt.Errorf("events on %s: %v", o[0], r)
				}
			}
			return nil
		})
		cond := volumeCondition(ctx, t, nodeR, pvR.Spec.CSI.VolumeHandle, "/not/staged")
		if !cond.GetAbnormal() || !strings.Contains(cond.GetMessage(), "damaged") {
			t.Fatalf("volume condition %v", cond)
		}
		time.Sleep(6 * time.Second) // a few more checks
		e.stillThere(ctx, "data-rep-0", uidR, pvR.Metadata.Name)
		if got, err := e.cp.AcceptedEvents(ctx); err != nil || slices.Contains(got, "e-rep") {
			t.Fatalf("accepted %v (%v) while a volume is on the disk", got, err)
		}
	})

	t.Run("class opted in, consent, replaced disk", func(t *testing.T) {
		i := diskIndex(t, nodeD, ldD.Status.CloudDiskID)
		start := time.Now()
		if err := e.cp.InjectEvent(ctx, cluster.DiskEvent{ID: "e-dmg", InstanceID: nodeD.InstanceID(), Type: "SystemMaintenance.ReInitErrorDisk",
			Status: "Inquiring", DiskID: ldD.Status.CloudDiskID, CanAccept: true}); err != nil {
			t.Fatal(err)
		}
		e.waitFor(ctx, "dmg-0 evicted", func() error {
			if p, ok := e.find(ctx, "pod", "-n", "default", "dmg-0"); ok && p.Metadata.DeletionTimestamp == "" {
				return fmt.Errorf("dmg-0 not being deleted")
			}
			return nil
		})
		// The kubelet would stop the evicted pod's containers and confirm
		// its end; no kubelet runs on this node.
		e.forceDeletePods(ctx, "dmg-0")
		var newNode string
		e.waitFor(ctx, "data-dmg-0 recreated and bound on another disk, dmg-0 scheduled there", func() error {
			c, _ := e.find(ctx, "pvc", "-n", "default", "data-dmg-0")
			if c.Metadata.UID == uidD || c.Spec.VolumeName == "" {
				return fmt.Errorf("claim %s bound to %q", c.Metadata.UID, c.Spec.VolumeName)
			}
			pv, _ := e.find(ctx, "pv", c.Spec.VolumeName)
			p, _ := e.find(ctx, "pod", "-n", "default", "dmg-0")
			if p.Spec.NodeName == "" || p.Spec.NodeName != pv.node() {
				return fmt.Errorf("dmg-0 on %q, its PV on %q", p.Spec.NodeName, pv.node())
			}
			if pv.Spec.CSI.VolumeAttributes["ecsDiskId"] == ldD.Status.CloudDiskID {
				return fmt.Errorf("the new volume is on the damaged disk")
			}
			newNode = p.Spec.NodeName
			return nil
		})
		t.Logf("disk %s damaged: the replica's claim was recreated and its pod scheduled on %s after %s", ldD.Status.CloudDiskID, newNode,
			time.Since(start).Round(100*time.Millisecond))
		if r := e.eventsFor(ctx, "data-dmg-0", uidD); !slices.Contains(r, "ClaimDeleted") {
			t.Errorf("events on the old claim: %v", r)
		}
		e.waitFor(ctx, "the event accepted once the old volume is gone", func() error {
			got, err := e.cp.AcceptedEvents(ctx)
			if err != nil || !slices.Contains(got, "e-dmg") {
				return fmt.Errorf("accepted %v (%v)", got, err)
			}
			return nil
		})
		if err := e.cp.ReplaceDisk(ctx, nodeD, i, "e-dmg"); err != nil {
			t.Fatal(err)
		}
		e.waitFor(ctx, "the replaced disk Free, the old one no longer Damaged", func() error {
			var fresh, old *localDisk
			for _, d := range e.localDisks(ctx) {
				switch d.Status.CloudDiskID {
				case nodeD.DiskID(i):
					fresh = &d
				case ldD.Status.CloudDiskID:
					old = &d
				}
			}
			if fresh == nil || fresh.Status.Phase != "Free" {
				return fmt.Errorf("new disk %s: %+v", nodeD.DiskID(i), fresh)
			}
			if old != nil && (old.Status.Phase == "Damaged" || old.Spec.Damaged != "") {
				return fmt.Errorf("old disk still damaged: %+v", old)
			}
			return nil
		})
		e.stillThere(ctx, "data-rep-0", uidR, pvR.Metadata.Name)
	})
	_ = pvD
}

// TestLostVolume: a redeploy of the real node (the instance comes back on
// another host with every local disk blank). The volumes the driver had
// formatted are reported lost (LocalDisk, events on the claims); the
// kubelet's NodeStage of the one whose class does not opt in is refused
// and its disk stays blank: nothing is formatted. The one whose class
// opts in is recreated, and its pod runs again.
func TestLostVolume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	e := startCluster(ctx, t, topology{real: disks(3, cluster.DiskSpec{SizeBytes: gib})})
	if err := e.cp.StartController(ctx, cluster.ControllerConfig{GracePeriod: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	e.apply(ctx, lossClass("recreate", "recreate"))
	e.apply(ctx, lossClass("report", ""))
	e.apply(ctx, statefulSet("lv", "report", 1, "512Mi"))
	e.apply(ctx, statefulSet("lr", "recreate", 1, "512Mi"))
	running := func(names ...string) func() error {
		return func() error {
			for _, n := range names {
				if p, _ := e.find(ctx, "pod", "-n", "default", n); !p.running() {
					return fmt.Errorf("%s is %s", n, p.Status.Phase)
				}
			}
			return nil
		}
	}
	e.waitFor(ctx, "lv-0 and lr-0 running", running("lv-0", "lr-0"))
	uidV, pvV := e.volumeOf(ctx, "data-lv-0")
	uidR, _ := e.volumeOf(ctx, "data-lr-0")
	ldV, ok := e.diskOfClaim(ctx, "data-lv-0")
	if !ok {
		t.Fatal("no LocalDisk for data-lv-0")
	}

	// A redeploy reboots the instance: the pods stop and the disks are
	// unmounted first.
	for _, s := range []string{"lv", "lr"} {
		e.kubectl(ctx, "", "scale", "statefulset", "-n", "default", s, "--replicas=0")
	}
	e.waitFor(ctx, "the pods gone and the volumes unmounted", func() error {
		if pods := e.list(ctx, "pods", "-n", "default", "-l", "app in (lv,lr)"); len(pods) > 0 {
			return fmt.Errorf("%d pods left", len(pods))
		}
		for _, l := range e.real.Loops {
			if out, _ := exec.CommandContext(ctx, "findmnt", "--noheadings", "--source", l).Output(); len(out) > 0 {
				return fmt.Errorf("%s still mounted: %s", l, out)
			}
		}
		return nil
	})
	if err := e.cp.Redeploy(ctx, e.real); err != nil {
		t.Fatal(err)
	}
	e.waitFor(ctx, "the volume reported lost", func() error {
		d, ok := e.diskOfClaim(ctx, "data-lv-0")
		if !ok || d.Status.Volume == nil || !strings.Contains(d.Status.Volume.Lost, "reads blank") {
			return fmt.Errorf("LocalDisk %+v", d)
		}
		if r := e.eventsFor(ctx, "data-lv-0", uidV); !slices.Contains(r, "VolumeLost") {
			return fmt.Errorf("events on data-lv-0: %v", r)
		}
		return nil
	})
	start := time.Now()
	for _, s := range []string{"lv", "lr"} {
		e.kubectl(ctx, "", "scale", "statefulset", "-n", "default", s, "--replicas=1")
	}
	e.waitFor(ctx, "lr-0 running again with a new claim", func() error {
		if c, _ := e.find(ctx, "pvc", "-n", "default", "data-lr-0"); c.Metadata.UID == uidR || c.Spec.VolumeName == "" {
			return fmt.Errorf("data-lr-0 is %s, bound to %q", c.Metadata.UID, c.Spec.VolumeName)
		}
		return running("lr-0")()
	})
	t.Logf("redeployed node: the opted-in replica ran again %s after its StatefulSet was scaled up", time.Since(start).Round(100*time.Millisecond))
	e.waitFor(ctx, "the kubelet refused to stage lv-0's lost volume", func() error {
		for _, ev := range e.list(ctx, "events", "-n", "default", "--field-selector", "involvedObject.name=lv-0") {
			if ev.Reason == "FailedMount" && strings.Contains(ev.Message, "never formats it again") {
				return nil
			}
		}
		return fmt.Errorf("no FailedMount saying the volume is lost")
	})
	e.stillThere(ctx, "data-lv-0", uidV, pvV.Metadata.Name)
	if out, err := exec.CommandContext(ctx, "blkid", "-p", ldV.Status.Device).CombinedOutput(); err == nil || len(out) > 0 {
		t.Fatalf("the lost volume's disk %s carries something: %s (%v)", ldV.Status.Device, out, err)
	}
}
