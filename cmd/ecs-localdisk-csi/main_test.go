package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/options"
)

func TestExitCodes(t *testing.T) {
	os.Unsetenv("NODE_NAME")
	cases := []struct {
		args []string
		code int
	}{
		{[]string{"--version"}, 0},
		{[]string{"--help"}, 0},
		{[]string{"-h"}, 0},
		{[]string{"--node-id=n1", "--help"}, 0},
		{[]string{"--no-such-flag"}, 2},
		{[]string{"--devices=/dev/vdb"}, 2}, // no node ID
		{[]string{"--node-id=bad name!", "--devices=/dev/vdb"}, 2},
		{[]string{"--node-id=-n1", "--devices=/dev/vdb"}, 2},
		{[]string{"--node-id=n1", "--disk-source=ecs-typo", "--devices=/dev/vdb"}, 2},
		{[]string{"--node-id=n1", "--disk-source=ecs", "--allow-no-disks"}, 2},
		{[]string{"--node-id=n1", "--devices=/dev/vdb", "stray"}, 2},
		{[]string{"--node-id=n1", "--devices=/dev/vdb", "--", "--help"}, 2}, // after --, not a flag
	}
	for _, c := range cases {
		if got := run(c.args); got != c.code {
			t.Errorf("run(%q) = %d; want %d", c.args, got, c.code)
		}
	}
}

// TestHelpListsDriverFlagsFirst: every driver flag is listed, all before
// the first klog flag, and no klog flag among them.
func TestHelpListsDriverFlagsFirst(t *testing.T) {
	var o options.Options
	fs := newFlagSet(&o)
	var out bytes.Buffer
	printUsage(fs, &out)
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
	want := []string{"allow-no-disks", "credentials-file", "device-start-with", "devices", "disk-source", "driver-name",
		"ecs-endpoint", "endpoint", "metadata-endpoint", "node-id", "ram-role", "serialless-fallback", "state-dir", "version"}
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
