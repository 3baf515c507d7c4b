package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"
)

// TestExitCodes: help and version exit 0 on stdout; every bad flag exits
// 2 with a message on stderr that names the problem. No case here passes
// Validate, so none starts the driver.
func TestExitCodes(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	cases := []struct {
		args         []string
		code         int
		stdout, errs string
	}{
		{[]string{"--version"}, 0, "ecs-localdisk-csi ", ""},
		{[]string{"--help"}, 0, "Driver flags:", ""},
		{[]string{"-h"}, 0, "Driver flags:", ""},
		{[]string{"--help=false"}, 0, "Driver flags:", ""},
		{[]string{"--node-id=n1", "--help"}, 0, "Driver flags:", ""},
		{[]string{"--no-such-flag"}, 2, "", "flag provided but not defined: -no-such-flag\nRun ecs-localdisk-csi --help"},
		{[]string{"--devices=/dev/vdb"}, 2, "", "--node-id is required"},
		{[]string{"--node-id=bad name!", "--devices=/dev/vdb"}, 2, "", `--node-id "bad name!" is not a valid node name`},
		{[]string{"--node-id=-n1", "--devices=/dev/vdb"}, 2, "", `--node-id "-n1" is not a valid node name`},
		{[]string{"--node-id", "-h", "--devices=/dev/vdb"}, 2, "", `--node-id "-h" is not a valid node name`},
		{[]string{"--node-id=n1", "--disk-source=ecs-typo", "--devices=/dev/vdb"}, 2, "", `--disk-source "ecs-typo" is not supported`},
		{[]string{"--node-id=n1", "--disk-source=ecs", "--allow-no-disks"}, 2, "", "--allow-no-disks only applies to --disk-source=static"},
		{[]string{"--node-id=n1", "--devices=/dev/vdb", "stray"}, 2, "", `unexpected arguments: ["stray"]`},
		{[]string{"--node-id=n1", "--devices=/dev/vdb", "stray", "-h"}, 2, "", `unexpected arguments: ["stray" "-h"]`},
		{[]string{"--node-id=n1", "--devices=/dev/vdb", "--", "--help"}, 2, "", `unexpected arguments: ["--help"]`},
		{[]string{"controller", "--help"}, 0, "Controller flags:", ""},
		{[]string{"controller", "--cloud=aws"}, 2, "", `--cloud "aws" is not supported`},
		{[]string{"controller", "--cloud=none", "--ram-role=r"}, 2, "", "--ram-role only applies to --cloud=ecs"},
		{[]string{"controller", "--node-loss-grace-period=0s"}, 2, "", "--node-loss-grace-period 0s must be at least 1s"},
		{[]string{"controller", "stray"}, 2, "", `unexpected arguments: ["stray"]`},
		{[]string{"controller", "--node-id=n1"}, 2, "", "flag provided but not defined: -node-id\nRun ecs-localdisk-csi controller --help"},
	}
	for _, c := range cases {
		var stdout, stderr bytes.Buffer
		if got := run(c.args, &stdout, &stderr); got != c.code {
			t.Errorf("run(%q) = %d; want %d\nstderr: %s", c.args, got, c.code, stderr.String())
		}
		if !strings.Contains(stdout.String(), c.stdout) || c.stdout == "" && stdout.Len() > 0 {
			t.Errorf("run(%q) stdout %q; want it to hold %q", c.args, stdout.String(), c.stdout)
		}
		if !strings.Contains(stderr.String(), c.errs) || c.errs == "" && stderr.Len() > 0 {
			t.Errorf("run(%q) stderr %q; want it to hold %q", c.args, stderr.String(), c.errs)
		}
	}
}

// TestHelpListsDriverFlagsFirst: every driver flag is listed, all before
// the first klog flag, and no klog flag among them.
func TestHelpListsDriverFlagsFirst(t *testing.T) {
	var o options.Options
	fs := newFlagSet(&o)
	var out bytes.Buffer
	printUsage(fs, &out, usageHeader)
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
