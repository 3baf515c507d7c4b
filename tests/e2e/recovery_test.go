package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

// lossClass is a StorageClass of the driver with onDiskLoss set ("" for
// the default).
func lossClass(name, onLoss string) string {
	params := "  csi.storage.k8s.io/fstype: ext4\n"
	if onLoss != "" {
		params += "  onDiskLoss: " + onLoss + "\n"
	}
	return fmt.Sprintf(`apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: %s}
provisioner: %s
volumeBindingMode: WaitForFirstConsumer
parameters:
%s`, name, cluster.DriverName, params)
}

// eventsFor lists the reasons of the events on the object called name
// (and with that UID when uid is set).
func (e *env) eventsFor(ctx context.Context, name, uid string) []string {
	var out []string
	for _, ev := range e.list(ctx, "events", "-A", "--field-selector", "involvedObject.name="+name) {
		if uid == "" || ev.InvolvedObject.UID == uid {
			out = append(out, ev.Reason)
		}
	}
	return out
}

// volumeOf is the claim's UID and its PV, which must be bound.
func (e *env) volumeOf(ctx context.Context, claim string) (uid string, pv object) {
	e.t.Helper()
	c := e.get(ctx, "pvc", "-n", "default", claim)
	if c.Spec.VolumeName == "" {
		e.t.Fatalf("claim %s is not bound", claim)
	}
	return c.Metadata.UID, e.get(ctx, "pv", c.Spec.VolumeName)
}

// stillThere fails the test if the claim is not the one of uid any more,
// or its PV is gone.
func (e *env) stillThere(ctx context.Context, claim, uid, pv string) {
	e.t.Helper()
	out := e.kubectl(ctx, "", "get", "pvc", "-n", "default", claim, "-o", "jsonpath={.metadata.uid} {.spec.volumeName}")
	if out != uid+" "+pv {
		e.t.Fatalf("claim %s is %q, want UID and PV %s %s: it was deleted or recreated", claim, out, uid, pv)
	}
	if got := e.kubectl(ctx, "", "get", "pv", pv, "-o", "jsonpath={.metadata.deletionTimestamp}"); got != "" {
		e.t.Fatalf("PV %s is being deleted", pv)
	}
}

// TestNodeLoss: the cluster component on the real API server, with the
// shipped RBAC and one fake ECS for the cluster. Each of five nodes has one
// disk; StatefulSet "lost" uses a class with onDiskLoss: recreate, "kept"
// one without. A NotReady node, and a Node deleted while ECS still lists
// its instance (then registered again), change nothing. A Node deleted
// whose instance ECS released makes the opted-in replica's claim
// recreated and bound on another node with a free disk, and its pod
// scheduled there (the time is printed); for the class without opt-in the
// controller only tells.
func TestNodeLoss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ssd := cluster.DiskSpec{SizeBytes: 2 * gib, Category: "local_ssd_pro"}
	e := startCluster(ctx, t, topology{fake: [][]cluster.DiskSpec{{ssd}, {ssd}, {ssd}, {ssd}, {ssd}}})
	const grace = 10 * time.Second
	if err := e.cp.StartController(ctx, cluster.ControllerConfig{GracePeriod: grace}); err != nil {
		t.Fatal(err)
	}
	e.apply(ctx, lossClass("recreate", "recreate"))
	e.apply(ctx, lossClass("report", ""))
	e.apply(ctx, statefulSet("lost", "recreate", 2, "1Gi"))
	e.apply(ctx, statefulSet("kept", "report", 1, "1Gi"))
	e.waitFor(ctx, "3 claims bound and 3 pods scheduled", func() error {
		lost, kept := e.claimsOf(ctx, "lost"), e.claimsOf(ctx, "kept")
		if len(lost.bound)+len(kept.bound) != 3 || lost.scheduled+kept.scheduled != 3 {
			return fmt.Errorf("%d+%d bound, %d+%d scheduled", len(lost.bound), len(kept.bound), lost.scheduled, kept.scheduled)
		}
		return nil
	})
	uid0, pv0 := e.volumeOf(ctx, "data-lost-0")
	uid1, pv1 := e.volumeOf(ctx, "data-lost-1")
	uidK, pvK := e.volumeOf(ctx, "data-kept-0")
	n0, n1, nK := e.fakeNode(pv0.node()), e.fakeNode(pv1.node()), e.fakeNode(pvK.node())
	// Longer than the grace period and a few checks of the controller.
	settle := grace + 8*time.Second

	t.Run("NotReady node", func(t *testing.T) {
		e.kubectl(ctx, "", "patch", "node", n0.Name, "--subresource=status", "--type=strategic",
			"-p", `{"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletDown","message":"e2e"}]}}`)
		// The controller did look at the node, and asked ECS.
		want := fmt.Sprintf(`"Node holding volumes is deleted or not Ready" node=%q verdict="the node is not Ready, and ECS lists its instance %s"`, n0.Name, n0.InstanceID())
		e.waitFor(ctx, "the controller's verdict on the NotReady node", func() error {
			b, err := os.ReadFile(e.cp.ControllerLog())
			if err != nil || !strings.Contains(string(b), want) {
				return fmt.Errorf("no %s in the controller's log (%v)", want, err)
			}
			return nil
		})
		time.Sleep(settle)
		e.stillThere(ctx, "data-lost-0", uid0, pv0.Metadata.Name)
		e.kubectl(ctx, "", "patch", "node", n0.Name, "--subresource=status", "--type=strategic",
			"-p", `{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Fake","message":"kubelet-less node of the e2e suite"}]}}`)
	})

	t.Run("Node deleted, instance alive", func(t *testing.T) {
		e.kubectl(ctx, "", "delete", "node", n1.Name, "--wait=false")
		e.waitFor(ctx, "the controller to see that the instance still exists", func() error {
			if r := e.eventsFor(ctx, pv1.Metadata.Name, ""); !slices.Contains(r, "NodeDeletedInstanceAlive") {
				return fmt.Errorf("events on %s: %v", pv1.Metadata.Name, r)
			}
			return nil
		})
		time.Sleep(4 * time.Second) // two more checks
		e.stillThere(ctx, "data-lost-1", uid1, pv1.Metadata.Name)
		if err := e.cp.RegisterNode(ctx, n1); err != nil {
			t.Fatal(err)
		}
		e.waitFor(ctx, "lost-1 scheduled on its node again", func() error {
			p, _ := e.find(ctx, "pod", "-n", "default", "lost-1")
			if p.Spec.NodeName != n1.Name {
				return fmt.Errorf("lost-1 on %q", p.Spec.NodeName)
			}
			return nil
		})
		e.stillThere(ctx, "data-lost-1", uid1, pv1.Metadata.Name)
	})

	t.Run("Node deleted, instance released, class opted in", func(t *testing.T) {
		if err := e.cp.ReleaseInstance(ctx, n0); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		e.kubectl(ctx, "", "delete", "node", n0.Name, "--wait=false")
		var newNode string
		e.waitFor(ctx, "data-lost-0 recreated, bound on another node, and lost-0 scheduled there", func() error {
			c, _ := e.find(ctx, "pvc", "-n", "default", "data-lost-0")
			if c.Metadata.UID == uid0 || c.Spec.VolumeName == "" {
				return fmt.Errorf("claim %s bound to %q", c.Metadata.UID, c.Spec.VolumeName)
			}
			p, _ := e.find(ctx, "pod", "-n", "default", "lost-0")
			pv, _ := e.find(ctx, "pv", c.Spec.VolumeName)
			if p.Spec.NodeName == "" || p.Spec.NodeName != pv.node() {
				return fmt.Errorf("lost-0 on %q, its new PV on %q", p.Spec.NodeName, pv.node())
			}
			newNode = p.Spec.NodeName
			return nil
		})
		t.Logf("node %s deleted and its instance released: the replica's claim was recreated and its pod scheduled on %s after %s (grace period %s)",
			n0.Name, newNode, time.Since(start).Round(100*time.Millisecond), grace)
		if newNode == n0.Name || newNode == n1.Name || newNode == nK.Name {
			t.Errorf("lost-0 placed on %s, which has no free disk", newNode)
		}
		if out, _ := e.cp.Kubectl(ctx, "", "get", "pv", pv0.Metadata.Name, "--ignore-not-found", "-o", "name"); strings.TrimSpace(out) != "" {
			t.Errorf("the lost PV %s is still there", pv0.Metadata.Name)
		}
		for _, want := range []string{"LocalDiskLost", "ClaimDeleted"} {
			if r := e.eventsFor(ctx, "data-lost-0", uid0); !slices.Contains(r, want) {
				t.Errorf("no %s event on the old claim: %v", want, r)
			}
		}
		e.waitFor(ctx, "the lost node's capacity and LocalDisks gone", func() error {
			for _, c := range e.list(ctx, "csistoragecapacities", "-n", e.cp.Namespace) {
				if c.NodeTopology.MatchLabels[cluster.TopologyKey] == n0.Name {
					return fmt.Errorf("capacity %s of %s", c.Metadata.Name, n0.Name)
				}
			}
			for _, d := range e.localDisks(ctx) {
				if d.Spec.Node == n0.Name {
					return fmt.Errorf("LocalDisk %s", d.Metadata.Name)
				}
			}
			return nil
		})
		e.stillThere(ctx, "data-lost-1", uid1, pv1.Metadata.Name)
		e.stillThere(ctx, "data-kept-0", uidK, pvK.Metadata.Name)
	})

	t.Run("class without opt-in", func(t *testing.T) {
		if err := e.cp.ReleaseInstance(ctx, nK); err != nil {
			t.Fatal(err)
		}
		e.kubectl(ctx, "", "delete", "node", nK.Name, "--wait=false")
		e.waitFor(ctx, "LocalDiskLost on the claim", func() error {
			if r := e.eventsFor(ctx, "data-kept-0", uidK); !slices.Contains(r, "LocalDiskLost") {
				return fmt.Errorf("events %v", r)
			}
			return nil
		})
		time.Sleep(4 * time.Second)
		e.stillThere(ctx, "data-kept-0", uidK, pvK.Metadata.Name)
	})

	// The shipped RBAC let the controller do all it tried.
	b, err := os.ReadFile(e.cp.ControllerLog())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "forbidden") {
			t.Errorf("the controller was refused: %s", l)
		}
	}
}
