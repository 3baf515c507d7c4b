package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

// TestSidecarVersions: the csi-provisioner the suite runs is the version
// the shipped DaemonSet's image names, so that the two cannot drift apart.
func TestSidecarVersions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bin := binDir(t)
	r, err := cluster.Render(ctx, bin, filepath.Join(deployDir, "overlays", "static"))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := r.DaemonSet()
	if err != nil {
		t.Fatal(err)
	}
	c, err := cluster.Container(ds, "csi-provisioner")
	if err != nil {
		t.Fatal(err)
	}
	_, tag, ok := strings.Cut(c.Image[strings.LastIndex(c.Image, "/")+1:], ":")
	if !ok || strings.Contains(tag, "@") {
		t.Fatalf("the DaemonSet's csi-provisioner image %q has no plain tag", c.Image)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "csi-provisioner"), "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("csi-provisioner --version: %v: %s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 || f[len(f)-1] != tag {
		t.Errorf("csi-provisioner --version says %q, the DaemonSet runs %s: update the e2e-bins target and tests/e2e/go.mod (or the manifests)", strings.TrimSpace(string(out)), c.Image)
	}
}

// TestShippedRBAC: the provisioner acts as the DaemonSet's ServiceAccount
// with no more rights than the shipped RBAC gives. Its CSIStorageCapacity
// objects are owned by the DaemonSet (the Role lets it read its pod and the
// DaemonSet); without the ClusterRole's right to create PersistentVolumes a
// claim stays unbound, the apiserver refusing the ServiceAccount, and with
// the RBAC as shipped applied again the same claim is bound.
func TestShippedRBAC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const drop = "ClusterRole/ecs-localdisk-csi-provisioner/persistentvolumes/create"
	e := startCluster(ctx, t, topology{fake: [][]cluster.DiskSpec{{ssd}}, dropRule: drop})
	n := e.fakes[0]
	if n.Pod == "" {
		t.Fatalf("%s has no DaemonSet pod", n.Name)
	}
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	e.waitFor(ctx, "CSIStorageCapacity of "+n.Name+" owned by the DaemonSet", func() error {
		caps := e.list(ctx, "csistoragecapacities", "-n", e.cp.Namespace)
		if len(caps) == 0 {
			return fmt.Errorf("no CSIStorageCapacity in %s", e.cp.Namespace)
		}
		for _, c := range caps {
			if o := c.Metadata.OwnerReferences; len(o) != 1 || o[0].Kind != "DaemonSet" || o[0].Name != "ecs-localdisk-csi-node" {
				t.Fatalf("CSIStorageCapacity %s is owned by %+v, want the DaemonSet ecs-localdisk-csi-node", c.Metadata.Name, o)
			}
		}
		return nil
	})

	e.apply(ctx, statefulSet("rbac", "localdisk-ssd", 1, "512Mi"))
	user := "system:serviceaccount:" + e.cp.Namespace + ":ecs-localdisk-csi-node"
	e.waitFor(ctx, "the provisioner refused the PersistentVolume", func() error {
		b, err := os.ReadFile(n.Log("csi-provisioner"))
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "cannot create resource") && strings.Contains(l, "persistentvolumes") && strings.Contains(l, user) {
				return nil
			}
		}
		return fmt.Errorf("no refusal for %s in %s", user, n.Log("csi-provisioner"))
	})
	if c := e.claimsOf(ctx, "rbac"); len(c.bound) != 0 {
		t.Fatalf("claim bound without the right to create PersistentVolumes: %v", c.bound)
	}
	if pvs := e.list(ctx, "pv"); len(pvs) != 0 {
		t.Fatalf("%d PersistentVolumes exist without the right to create them", len(pvs))
	}

	if err := e.cp.Deploy(ctx, deployDir, ""); err != nil {
		t.Fatal(err)
	}
	e.waitFor(ctx, "the claim bound with the RBAC as shipped", func() error {
		if c := e.claimsOf(ctx, "rbac"); len(c.bound) != 1 {
			return fmt.Errorf("%d claims bound", len(c.bound))
		}
		return nil
	})
}
