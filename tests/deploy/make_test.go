package deploy

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/kyaml/kio"
)

// TestMakeDeployPrintsOnlyManifests: make deploy's stdout is a stream of
// Kubernetes objects that kubectl apply -f - takes, with kubectl's
// kustomize and with the one built from the Go module proxy.
func TestMakeDeployPrintsOnlyManifests(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is needed (Debian package make)")
	}
	type run struct{ kubectl, overlay string }
	runs := []run{{"/nonexistent/kubectl", ""}, {"/nonexistent/kubectl", "static"}}
	if _, err := exec.LookPath("kubectl"); err == nil {
		runs = append(runs, run{"kubectl", ""}, run{"kubectl", "ecs"}, run{"kubectl", "static"})
	} else {
		t.Log("kubectl is not installed: only the go-built kustomize branch runs")
	}
	for _, r := range runs {
		args := []string{"deploy", "KUBECTL=" + r.kubectl}
		if r.overlay != "" {
			args = append(args, "OVERLAY="+r.overlay)
		}
		cmd := exec.Command("make", args...)
		cmd.Dir = "../.."
		cmd.Env = withoutMake(os.Environ()) // as from a user's shell, also under make test
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("make %v: %v\n%s", args, err, stderr.String())
		}
		checkObjectStream(t, "make "+strings.Join(args, " "), stdout.String(), r.overlay)
	}
}

// objectFields are the top-level fields of the objects the manifests hold.
var objectFields = map[string]bool{"apiVersion": true, "kind": true, "metadata": true, "spec": true, "rules": true,
	"subjects": true, "roleRef": true, "data": true, "provisioner": true, "parameters": true, "reclaimPolicy": true,
	"volumeBindingMode": true, "allowVolumeExpansion": true, "mountOptions": true, "allowedTopologies": true}

func withoutMake(env []string) []string {
	var out []string
	for _, e := range env {
		if !strings.HasPrefix(e, "MAKELEVEL=") && !strings.HasPrefix(e, "MAKEFLAGS=") && !strings.HasPrefix(e, "MFLAGS=") {
			out = append(out, e)
		}
	}
	return out
}

// checkObjectStream: every document is an object with apiVersion, kind and
// a name, and the stream holds the driver's DaemonSet with the overlay's
// disk source (ecs by default).
func checkObjectStream(t *testing.T, what, out, overlay string) {
	t.Helper()
	nodes, err := (&kio.ByteReader{Reader: io.NopCloser(strings.NewReader(out))}).Read()
	if err != nil || len(nodes) == 0 {
		t.Fatalf("%s: stdout is not a stream of objects (%v):\n%s", what, err, out)
	}
	kinds := map[string]bool{}
	for _, n := range nodes {
		if n.GetApiVersion() == "" || n.GetKind() == "" || n.GetName() == "" {
			t.Errorf("%s: a document without apiVersion, kind or name:\n%s", what, n.MustString())
		}
		fields, err := n.Fields()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fields {
			if !objectFields[f] {
				t.Errorf("%s: %s %s has a top-level field %q that no object has: something else reached stdout", what, n.GetKind(), n.GetName(), f)
			}
		}
		kinds[n.GetKind()] = true
	}
	for _, k := range []string{"CSIDriver", "DaemonSet", "ServiceAccount", "ClusterRole"} {
		if !kinds[k] {
			t.Errorf("%s: no %s in the output", what, k)
		}
	}
	if overlay == "" {
		overlay = "ecs"
	}
	if !strings.Contains(out, "--disk-source="+overlay) {
		t.Errorf("%s: the DaemonSet lacks --disk-source=%s", what, overlay)
	}
}
