package deploy

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/yaml"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"
)

// TestStaticOverlayHasNoDefaultDevices: the static overlay names no device
// by default (a glob such as /dev/vd[b-z] also matches the cloud disks that
// Alibaba Cloud's disk driver attaches). The driver started from the
// rendered manifest, with the kubelet's $(VAR) expansion, refuses the
// shipped placeholder before it looks at any device.
func TestStaticOverlayHasNoDefaultDevices(t *testing.T) {
	m := render(t, filepath.Join(root, "overlays", "static"))
	args := driverArgs(t, m)
	devices := flagValue(args, "--devices")
	if devices != disk.PlaceholderPattern {
		t.Fatalf("static overlay --devices expands to %q, want the placeholder %s", devices, disk.PlaceholderPattern)
	}
	_, err := newStaticSource(t, args)
	if !errors.Is(err, disk.ErrPlaceholderPattern) {
		t.Fatalf("the driver started from the static overlay as shipped: %v; want ErrPlaceholderPattern", err)
	}
	if !strings.Contains(err.Error(), "list the node's local disks explicitly") {
		t.Errorf("the refusal does not say what to do: %v", err)
	}
}

// TestNoOverlayGlobsDevices: no overlay, as shipped, hands the driver a
// device glob, which could match a disk another driver attached.
func TestNoOverlayGlobsDevices(t *testing.T) {
	overlays, err := os.ReadDir(filepath.Join(root, "overlays"))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range overlays {
		args := driverArgs(t, render(t, filepath.Join(root, "overlays", o.Name())))
		for _, p := range strings.Split(flagValue(args, "--devices"), ",") {
			if strings.ContainsAny(p, "*?[") {
				t.Errorf("overlay %s passes the device glob %q", o.Name(), p)
			}
		}
	}
}

// TestStaticOverlayDevicesFromAnOverlay: an operator's overlay on top of
// the static one sets the devices by merging the ConfigMap, and the driver
// accepts them.
func TestStaticOverlayDevicesFromAnOverlay(t *testing.T) {
	static, err := filepath.Abs(filepath.Join(root, "overlays", "static"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, static) // kustomize takes no absolute base
	if err != nil {
		t.Fatal(err)
	}
	k := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ` + rel + `
configMapGenerator:
  - name: ecs-localdisk-csi-static-devices
    namespace: ecs-localdisk-csi
    behavior: merge
    literals:
      - devices=/dev/vdb,/dev/disk/by-id/virtio-bp1local2
`
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	args := driverArgs(t, render(t, dir))
	if got := flagValue(args, "--devices"); got != "/dev/vdb,/dev/disk/by-id/virtio-bp1local2" {
		t.Fatalf("--devices expands to %q", got)
	}
	src, err := newStaticSource(t, args)
	if err != nil || src.String() != "static:/dev/vdb,/dev/disk/by-id/virtio-bp1local2" {
		t.Fatalf("the driver refuses the operator's devices: %v %v", src, err)
	}
}

// driverArgs returns the driver container's arguments as the kubelet runs
// them: $(VAR) expanded from the container's env, fieldRefs given
// stand-in values and configMapKeyRefs read from the rendered ConfigMaps.
func driverArgs(t *testing.T, m resmap.ResMap) []string {
	t.Helper()
	drv := container(t, get(t, m, "DaemonSet", "ecs-localdisk-csi-node"), "driver")
	env := map[string]string{}
	if list, _ := drv.Pipe(yaml.Lookup("env")); list != nil {
		elems, err := list.Elements()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range elems {
			name := field(t, e, "name")
			switch {
			case lookup(e, "value") != nil:
				env[name] = field(t, e, "value")
			case lookup(e, "valueFrom", "fieldRef") != nil:
				env[name] = "stand-in-" + field(t, e, "valueFrom", "fieldRef", "fieldPath")
			case lookup(e, "valueFrom", "configMapKeyRef") != nil:
				cm := get(t, m, "ConfigMap", field(t, e, "valueFrom", "configMapKeyRef", "name"))
				env[name] = field(t, cm, "data", field(t, e, "valueFrom", "configMapKeyRef", "key"))
			default:
				t.Fatalf("env %s: no value the test understands", name)
			}
		}
	}
	list, err := drv.Pipe(yaml.Lookup("args"))
	if err != nil || list == nil {
		t.Fatal("driver has no args")
	}
	var args []string
	for _, a := range list.Content() {
		v := a.Value
		for name, val := range env {
			v = strings.ReplaceAll(v, "$("+name+")", val)
		}
		if strings.Contains(v, "$(") {
			t.Fatalf("driver arg %q refers to an env var the container lacks", a.Value)
		}
		args = append(args, v)
	}
	return args
}

func lookup(n *yaml.RNode, path ...string) *yaml.RNode {
	v, err := n.Pipe(yaml.Lookup(path...))
	if err != nil {
		return nil
	}
	return v
}

// flagValue is the value of --name=value in args, "" when absent.
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// newStaticSource parses args with the driver's own options (klog's flags
// left out), validates them and builds the static source as the driver's
// main does, without looking at any device.
func newStaticSource(t *testing.T, args []string) (*disk.Static, error) {
	t.Helper()
	fs := flag.NewFlagSet("driver", flag.ContinueOnError)
	var o options.Options
	o.AddFlags(fs)
	var known []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if fs.Lookup(name) != nil {
			known = append(known, a)
		}
	}
	if err := fs.Parse(known); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatalf("the driver's options refuse %v: %v", known, err)
	}
	if o.DiskSource != "static" {
		t.Fatalf("--disk-source=%s", o.DiskSource)
	}
	return disk.NewStatic(disk.StaticConfig{Patterns: o.DevicePatterns(), Prober: noProber{}})
}

type noProber struct{}

func (noProber) Probe(context.Context, string) (disk.Probe, error) {
	return disk.Probe{}, errors.New("the deploy test reads no device")
}
