package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/cli"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// TestExitCodes: help and version exit 0 on stdout; every bad flag exits
// 2 with a message on stderr that names the problem. No case here passes
// Validate, so none starts the driver.
func TestExitCodes(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	testutil.CheckExitCodes(t, run, []testutil.ExitCase{
		testutil.Exit(0, "ecs-localdisk-csi ", "", "--version"),
		testutil.Exit(0, "Driver flags:", "", "--help"),
		testutil.Exit(0, "Driver flags:", "", "-h"),
		testutil.Exit(0, "Driver flags:", "", "--help=false"),
		testutil.Exit(0, "Driver flags:", "", "--node-id=n1", "--help"),
		testutil.Exit(2, "", "flag provided but not defined: -no-such-flag\nRun ecs-localdisk-csi --help", "--no-such-flag"),
		testutil.Exit(2, "", "--node-id is required", "--devices=/dev/vdb"),
		testutil.Exit(2, "", `--node-id "bad name!" is not a valid node name`, "--node-id=bad name!", "--devices=/dev/vdb"),
		testutil.Exit(2, "", `--node-id "-n1" is not a valid node name`, "--node-id=-n1", "--devices=/dev/vdb"),
		testutil.Exit(2, "", `--node-id "-h" is not a valid node name`, "--node-id", "-h", "--devices=/dev/vdb"),
		testutil.Exit(2, "", `--disk-source "ecs-typo" is not supported`, "--node-id=n1", "--disk-source=ecs-typo", "--devices=/dev/vdb"),
		testutil.Exit(2, "", "--allow-no-disks only applies to --disk-source=static", "--node-id=n1", "--disk-source=ecs", "--allow-no-disks"),
		testutil.Exit(2, "", `unexpected arguments: ["stray"]`, "--node-id=n1", "--devices=/dev/vdb", "stray"),
		testutil.Exit(2, "", `unexpected arguments: ["stray" "-h"]`, "--node-id=n1", "--devices=/dev/vdb", "stray", "-h"),
		testutil.Exit(2, "", `unexpected arguments: ["--help"]`, "--node-id=n1", "--devices=/dev/vdb", "--", "--help"),
	})
}

// TestHelpListsDriverFlagsFirst: every driver flag is listed, all before
// the first klog flag, and no klog flag among them.
func TestHelpListsDriverFlagsFirst(t *testing.T) {
	var o options.Options
	fs := newFlagSet(&o)
	var out bytes.Buffer
	cli.PrintUsage(fs, &out, usageHeader)
	text := out.String()
	driver, logging, found := strings.Cut(text, "Logging flags (klog):")
	if !found || !strings.Contains(driver, "Driver flags:") {
		t.Fatalf("usage has no two sections:\n%s", text)
	}
	names := regexp.MustCompile(`(?m)^  --([a-z_-]+)`)
	var own []string
	for _, m := range names.FindAllStringSubmatch(driver, -1) {
		own = append(own, m[1])
	}
	want := []string{"allow-no-disks", "cleanup-checkpoint-interval", "cleanup-max-rate", "credentials-file", "device-start-with", "devices", "disk-rescan-interval", "disk-source", "driver-name",
		"ecs-endpoint", "endpoint", "kube-api-burst", "kube-api-qps", "kubeconfig", "metadata-endpoint", "metrics-address", "node-id", "ram-role", "serialless-fallback", "state-dir", "version"}
	if strings.Join(own, " ") != strings.Join(want, " ") {
		t.Errorf("driver section lists %v; want %v", own, want)
	}
	var klogFlags []string
	for _, m := range names.FindAllStringSubmatch(logging, -1) {
		klogFlags = append(klogFlags, m[1])
	}
	if !strings.Contains(" "+strings.Join(klogFlags, " ")+" ", " v ") || len(klogFlags) < 5 {
		t.Errorf("logging section lists %v; want klog's flags with --v", klogFlags)
	}
	if strings.Contains(text, "klog: ") {
		t.Errorf("the section marker leaked into the text:\n%s", text)
	}
}

func TestVersionLine(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v1.2.3", "abc1234"
	if got := versionLine(); !strings.HasPrefix(got, "ecs-localdisk-csi v1.2.3 (commit abc1234, go") {
		t.Errorf("versionLine() = %q", got)
	}
	commit = "" // a plain go build: the VCS stamp, or "unknown" in a test binary
	if got := versionLine(); !regexp.MustCompile(`\(commit ([0-9a-f]{12}(-dirty)?|unknown), go`).MatchString(got) {
		t.Errorf("versionLine() without a stamped commit = %q", got)
	}
}

// TestControllerSubcommand builds both commands as the image installs
// them, side by side: "ecs-localdisk-csi controller" runs the controller
// binary with the arguments after "controller" and ends with its exit code
// and output. Without the controller binary, or with a file of its name
// that is not executable, it fails with exit code 1 and says what is
// missing.
func TestControllerSubcommand(t *testing.T) {
	dir := t.TempDir()
	node, ctrl := filepath.Join(dir, "ecs-localdisk-csi"), filepath.Join(dir, "ecs-localdisk-csi-controller")
	for bin, pkg := range map[string]string{node: ".", ctrl: "../ecs-localdisk-csi-controller"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", pkg, err, out)
		}
	}
	runBin := func(bin string, args ...string) (int, string, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.Env = []string{"PATH=" + t.TempDir()} // nothing on PATH: only the binary beside it
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("%s %q: %v", bin, args, err)
		}
		return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
	}
	if code, out, _ := runBin(node, "controller", "--help"); code != 0 || !strings.Contains(out, "Usage: ecs-localdisk-csi controller") || !strings.Contains(out, "Controller flags:") {
		t.Errorf("controller --help: exit %d, stdout %q", code, out)
	}
	if code, _, errs := runBin(node, "controller", "--cloud=aws"); code != 2 || !strings.Contains(errs, `--cloud "aws" is not supported`) {
		t.Errorf("controller --cloud=aws: exit %d, stderr %q; want 2 and the controller's complaint", code, errs)
	}
	// The node driver's own flags are not the controller's.
	if code, _, errs := runBin(node, "controller", "--node-id=n1"); code != 2 || !strings.Contains(errs, "flag provided but not defined: -node-id") {
		t.Errorf("controller --node-id=n1: exit %d, stderr %q", code, errs)
	}
	// A controller file that is not executable is not the controller.
	if err := os.Chmod(ctrl, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runBin(node, "controller", "--help"); code != 1 || out != "" || !strings.Contains(errs, "ecs-localdisk-csi-controller, which is not installed beside this binary or on PATH") {
		t.Errorf("controller --help with a controller file that is not executable: exit %d, stdout %q, stderr %q; want 1 and what is missing", code, out, errs)
	}
	if err := os.Remove(ctrl); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runBin(node, "controller", "--help"); code != 1 || out != "" || !strings.Contains(errs, "ecs-localdisk-csi-controller, which is not installed beside this binary or on PATH") {
		t.Errorf("controller --help without the controller binary: exit %d, stdout %q, stderr %q; want 1 and what is missing", code, out, errs)
	}
}

// TestNodeDriverLinksNoClientset: the node driver, which runs on every
// node, links neither client-go's clientset, its informers nor leader
// election. Those register every API group of Kubernetes at start, which
// cost the node driver about 10 MiB of its idle memory; only the cluster
// component (ecs-localdisk-csi-controller) needs them.
func TestNodeDriverLinksNoClientset(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 100 || !slices.Contains(deps, "k8s.io/client-go/rest") {
		t.Fatalf("go list -deps gave %d packages, without k8s.io/client-go/rest: not the driver's dependencies", len(deps))
	}
	for _, p := range deps {
		if p == "k8s.io/client-go/kubernetes" || strings.HasPrefix(p, "k8s.io/client-go/kubernetes/") || strings.HasPrefix(p, "k8s.io/client-go/informers") ||
			strings.HasSuffix(p, "/leaderelection") || strings.HasPrefix(p, "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/recovery") {
			t.Errorf("the node driver links %s", p)
		}
	}
}

// TestTuneGC: the driver collects at 50 % heap growth, unless GOGC says
// otherwise.
func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "") // restores GOGC at the end
	os.Unsetenv("GOGC")
	tuneGC()
	if p := debug.SetGCPercent(100); p != 50 {
		t.Errorf("without GOGC the driver collects at %d %%; want 50", p)
	}
	t.Setenv("GOGC", "200")
	debug.SetGCPercent(200) // as the runtime reads GOGC at start
	tuneGC()
	if p := debug.SetGCPercent(100); p != 200 {
		t.Errorf("with GOGC=200 the driver collects at %d %%; want GOGC's 200", p)
	}
}
