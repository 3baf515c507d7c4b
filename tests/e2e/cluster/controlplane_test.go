package cluster

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// binDir is where `make e2e-bins` put the binaries.
func binDir(t *testing.T) string {
	dir := os.Getenv("E2E_BIN")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = home + "/.cache/ecs-localdisk-csi/e2e/bin"
	}
	if _, err := os.Stat(dir + "/kube-apiserver"); err != nil {
		t.Fatalf("no binaries in %s: run make e2e-bins first", dir)
	}
	return dir
}

// TestControlPlane starts the control plane, creates a kubelet-less node and
// a pod pinned to it by a selector, and checks the scheduler binds it.
func TestControlPlane(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := Start(ctx, Config{Bin: binDir(t), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	if _, err := cp.Kubectl(ctx, `apiVersion: v1
kind: Node
metadata:
  name: fake-1
  labels:
    kubernetes.io/hostname: fake-1
status:
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  conditions:
  - {type: Ready, status: "True", reason: Fake, message: fake}
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kubectl(ctx, `apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: fake-1}
  containers: [{name: c, image: docker.io/library/busybox:1.36, imagePullPolicy: Never}]
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	err = waitFor(ctx, nil, "pod scheduled", func() error {
		out, err := cp.Kubectl(ctx, "", "get", "pod", "p1", "-o", "jsonpath={.spec.nodeName}")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "fake-1" {
			return os.ErrNotExist
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
