package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The accounting of make conformance, on hand-made reports: every skip
// needs a reason on record, every failure and every stale entry counts.

func it(name, state, msg string) spec {
	s := spec{ContainerHierarchyTexts: []string{"External Storage [Driver: d]"}, LeafNodeText: name, LeafNodeType: "It", State: state}
	s.Failure.Message = msg
	return s
}

func entries(t *testing.T, yaml string) []skipEntry {
	t.Helper()
	p := filepath.Join(t.TempDir(), "list.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := readSkipList(p)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestSkipListNeedsReasons(t *testing.T) {
	for _, bad := range []string{
		"- match: 'x'\n",                        // no reason
		"- match: 'x'\n  reason: '  '\n",        // a blank one
		"- match: '('\n  reason: r\n",           // not a regular expression
		"- match: 'x'\n  reason: r\n  why: y\n", // an unknown field (a typo)
	} {
		p := filepath.Join(t.TempDir(), "list.yaml")
		if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readSkipList(p); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	for _, f := range []string{skipListFile, suiteSkipsFile} {
		if _, err := readSkipList(f); err != nil {
			t.Errorf("the shipped list: %v", err)
		}
	}
}

func TestSummaryAccountsForEverySkip(t *testing.T) {
	skips := entries(t, "- match: 'needs a registry'\n  reason: no registry\n- match: 'gone test'\n  reason: stale\n")
	suite := entries(t, "- match: 'does not support snapshots'\n  reason: no snapshots\n- match: 'never said'\n  reason: stale too\n")
	specs := []spec{
		it("provisions", "passed", ""),
		it("writes", "passed", ""),
		it("breaks", "failed", "boom\nmore"),
		it("times out", "timedout", "slow"),
		it("needs a registry", "skipped", ""),
		it("snapshots", "skipped", `Driver "d" does not support snapshots - skipping`),
		it("skips for no known reason", "skipped", "some other reason"),
		it("filtered out", "skipped", ""),
		{ContainerHierarchyTexts: []string{"In-tree Volumes"}, LeafNodeText: "not ours", LeafNodeType: "It", State: "skipped"},
		{LeafNodeType: "SynchronizedBeforeSuite", State: "failed", Failure: struct{ Message string }{"cluster not ready"}},
	}
	sum := summarize(specs, skips, suite)
	if sum.passed != 2 {
		t.Errorf("passed %d, want 2", sum.passed)
	}
	want := []string{"failed: External Storage [Driver: d] breaks: boom", "timedout: External Storage [Driver: d] times out: slow", "SynchronizedBeforeSuite: cluster not ready"}
	for _, w := range want {
		if !slices.Contains(sum.failed, w) {
			t.Errorf("failed %q, want %q in it", sum.failed, w)
		}
	}
	if len(sum.listed["no registry"]) != 1 || len(sum.suite["no snapshots"]) != 1 {
		t.Errorf("listed %v, suite %v", sum.listed, sum.suite)
	}
	// A skip with a message no entry matches, and a test filtered out by
	// nothing on the list: both unaccounted. The other focus's test is
	// not counted.
	if len(sum.unaccounted) != 2 || !strings.Contains(sum.unaccounted[0], "some other reason") {
		t.Errorf("unaccounted %q", sum.unaccounted)
	}
	if len(sum.unused) != 2 || !strings.Contains(sum.unused[0], "gone test") || !strings.Contains(sum.unused[1], "never said") {
		t.Errorf("unused %q, want both stale entries", sum.unused)
	}
	if out := sum.String(); !strings.Contains(out, "2 passed, 3 failed, 4 skipped") {
		t.Errorf("summary:\n%s", out)
	}
}

func TestMergeReports(t *testing.T) {
	parallel := []spec{it("a", "passed", ""), it("disruptive", "skipped", ""), it("listed", "skipped", ""),
		{LeafNodeType: "SynchronizedBeforeSuite", State: "passed"}}
	disruptive := []spec{it("a", "skipped", ""), it("disruptive", "failed", "kubelet"), it("listed", "skipped", ""),
		{LeafNodeType: "SynchronizedBeforeSuite", State: "failed"}}
	m := mergeReports(mergeReports(nil, parallel), disruptive)
	got := map[string]string{}
	for _, s := range m {
		got[s.LeafNodeType+" "+s.LeafNodeText] = s.State
	}
	want := map[string]string{"It a": "passed", "It disruptive": "failed", "It listed": "skipped", "SynchronizedBeforeSuite ": "failed"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s (all: %v)", k, got[k], v, got)
		}
	}
	if len(m) != len(want) {
		t.Errorf("%d specs after the merge, want %d", len(m), len(want))
	}
}
