package options

import (
	"flag"
	"strings"
	"testing"
)

func parse(t *testing.T, args ...string) Options {
	t.Helper()
	t.Setenv("NODE_NAME", "env-node")
	var o Options
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return o
}

func TestDefaults(t *testing.T) {
	o := parse(t, "--devices=/dev/vdb")
	if o.NodeID != "env-node" || o.DriverName != DefaultDriverName || o.DiskSource != "static" || o.Endpoint != "unix:///csi/csi.sock" {
		t.Fatalf("defaults: %+v", o)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestAllowNoDisks(t *testing.T) {
	o := parse(t, "--devices=/dev/vdb", "--allow-no-disks")
	if err := o.Validate(); err != nil || !o.AllowNoDisks {
		t.Fatalf("static with --allow-no-disks: %v, %+v", err, o)
	}
}

func TestDevicePatterns(t *testing.T) {
	o := parse(t, "--devices= /dev/vd[b-z] ,,/dev/nvme*n1")
	got := strings.Join(o.DevicePatterns(), "|")
	if got != "/dev/vd[b-z]|/dev/nvme*n1" {
		t.Fatalf("patterns %q", got)
	}
}

func TestValidateRejects(t *testing.T) {
	cases := map[string][]string{
		"--endpoint":                          {"--devices=/dev/vdb", "--endpoint=/csi/csi.sock"},
		"--node-id":                           {"--devices=/dev/vdb", "--node-id="},
		"--driver-name":                       {"--devices=/dev/vdb", "--driver-name=a/b"},
		"--state-dir":                         {"--devices=/dev/vdb", "--state-dir=relative"},
		"--disk-source":                       {"--devices=/dev/vdb", "--disk-source=nfs"},
		"needs --devices":                     {},
		"absolute path":                       {"--devices=vdb"},
		"syntax error":                        {"--devices=/dev/vd[b"},
		"--serialless-fallback only applies":  {"--devices=/dev/vdb", "--serialless-fallback"},
		"--device-start-with only applies":    {"--disk-source=ecs", "--device-start-with=vdc"},
		"not a kernel disk name":              {"--disk-source=ecs", "--serialless-fallback", "--device-start-with=/dev/vdb"},
		"--ram-role only applies":             {"--devices=/dev/vdb", "--ram-role=r"},
		"--allow-no-disks only applies":       {"--disk-source=ecs", "--allow-no-disks"},
		"not a valid node name":               {"--devices=/dev/vdb", "--node-id=node a"},
		"not a valid node name (letters":      {"--devices=/dev/vdb", "--node-id=-a"},
		"--cleanup-max-rate \"fast\"":         {"--devices=/dev/vdb", "--cleanup-max-rate=fast"},
		"--cleanup-max-rate \"-1Mi\"":         {"--devices=/dev/vdb", "--cleanup-max-rate=-1Mi"},
		"--cleanup-max-rate \"9999999999Gi\"": {"--devices=/dev/vdb", "--cleanup-max-rate=9999999999Gi"},
		"--cleanup-checkpoint-interval":       {"--devices=/dev/vdb", "--cleanup-checkpoint-interval=10ms"},
		"--metrics-address \"9809\"":          {"--devices=/dev/vdb", "--metrics-address=9809"},
		"--kube-api-qps":                      {"--devices=/dev/vdb", "--kube-api-qps=0"},
		"--disk-rescan-interval":              {"--devices=/dev/vdb", "--disk-rescan-interval=0s"},
	}
	for want, args := range cases {
		o := parse(t, args...)
		err := o.Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: %v; want an error naming %q", args, err, want)
		}
	}
}

func TestCleanupMaxRate(t *testing.T) {
	for v, want := range map[string]int64{"": 0, "0": 0, "52428800": 50 << 20, "200Mi": 200 << 20, "1Gi": 1 << 30, "64Ki": 64 << 10} {
		o := parse(t, "--devices=/dev/vdb", "--cleanup-max-rate="+v)
		if got, err := o.CleanupBytesPerSecond(); err != nil || got != want || o.Validate() != nil {
			t.Errorf("--cleanup-max-rate=%q: %d %v, want %d", v, got, err, want)
		}
	}
}
