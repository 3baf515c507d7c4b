package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

var (
	conformance = flag.Bool("conformance", false, "run Kubernetes' external storage e2e suite (make conformance)")
	confProcs   = flag.Int("conformance.procs", 4, "parallel e2e.test processes")
	confNodes   = flag.Int("conformance.nodes", 2, "real nodes, each in a network namespace of its own")
	confDisks   = flag.Int("conformance.disks", 10, "disks of 2 GiB per node")
	confFocus   = flag.String("conformance.focus", `External.Storage`, "ginkgo --focus")
	confReport  = flag.String("conformance.report", "", "directory for the suite's JSON report and the summary (default: a temporary one, kept)")
)

// The suite's files in the repository.
const (
	confDir        = "conformance"
	testDriverFile = confDir + "/testdriver.yaml"
	skipListFile   = confDir + "/skips.yaml"
	suiteSkipsFile = confDir + "/suite-skips.yaml"
)

// TestConformance runs Kubernetes' own external storage e2e suite
// (e2e.test of k8s.io/kubernetes v1.36.1, built by make e2e-bins) against
// the driver on real kubelets, each in a network namespace of its own, with
// the test-driver definition conformance/testdriver.yaml. It fails on any
// failed test, and on any skipped test that is neither on the written skip
// list (conformance/skips.yaml) nor skipped by the suite itself for a
// reason conformance/suite-skips.yaml accounts for.
func TestConformance(t *testing.T) {
	if !*conformance {
		t.Skip("Kubernetes' storage suite runs under make conformance (-conformance): it takes most of half an hour")
	}
	requireRoot(t)
	bin := binDir(t)
	for _, b := range []string{"e2e.test", "ginkgo", "agnhost"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("no %s in %s: run make e2e-bins", b, bin)
		}
	}
	skips, err := readSkipList(skipListFile)
	if err != nil {
		t.Fatal(err)
	}
	suiteSkips, err := readSkipList(suiteSkipsFile)
	if err != nil {
		t.Fatal(err)
	}
	report := *confReport
	if report == "" {
		if report, err = os.MkdirTemp("", "conformance-"); err != nil {
			t.Fatal(err)
		}
	}
	if report, err = filepath.Abs(report); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(report, 0o755); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Minute)
	defer cancel()
	images := filepath.Join(report, "images.oci.tar")
	if err := cluster.WriteTestImages(images, filepath.Join(bin, "agnhost")); err != nil {
		t.Fatal(err)
	}
	e := startCluster(ctx, t, topology{
		real:    disks(*confDisks, cluster.DiskSpec{SizeBytes: 2 * gib}),
		reals:   *confNodes,
		network: true,
		images:  []string{images},
	})

	// The disruptive tests stop and start kubelets over SSH.
	sshKey := filepath.Join(report, "node-ssh.key")
	if err := e.cp.StartNodeSSH(sshKey); err != nil {
		t.Fatal(err)
	}
	repo, _ := filepath.Abs("../..")
	driverDef, _ := filepath.Abs(testDriverFile)
	suiteArgs := []string{
		"-kubeconfig=" + e.cp.Kubeconfig,
		"-kubectl-path=" + filepath.Join(bin, "kubectl"),
		"-storage.testdriver=" + driverDef,
		"-repo-root=" + repo,
		"-report-dir=" + report,
		"-provider=local",
		"-node-os-distro=debian",
		"-minStartupPods=0",
		"-disable-log-dump",
	}
	env := append(os.Environ(), "KUBE_SSH_KEY_PATH="+sshKey, "KUBE_SSH_USER=root")
	// Two runs: the tests that may share the cluster, in parallel (the
	// [Serial] ones last, alone: ginkgo's Serial decorator), then the
	// [Disruptive] ones one at a time, as Kubernetes' own serial jobs run
	// them: they stop kubelets, which no other test may be using.
	var specs []spec
	var runErrs []error
	for _, phase := range []struct {
		name, skip string
		procs      int
	}{
		{"parallel", `\[Disruptive\]`, *confProcs},
		{"disruptive", "", 1},
	} {
		focus := *confFocus
		if phase.name == "disruptive" {
			focus = "(" + focus + `).*\[Disruptive\]`
		}
		skip := phase.skip
		if len(skips) > 0 {
			skip = strings.TrimPrefix(skip+"|"+skipRegexp(skips), "|")
		}
		args := []string{"--procs=" + strconv.Itoa(phase.procs), "--timeout=60m", "--no-color",
			"--focus=" + focus, "--json-report=report-" + phase.name + ".json", "--output-dir=" + report}
		if skip != "" {
			args = append(args, "--skip="+skip)
		}
		args = append(append(args, filepath.Join(bin, "e2e.test"), "--"), suiteArgs...)
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "ginkgo"), args...)
		cmd.Stdout, cmd.Stderr, cmd.Env = os.Stdout, os.Stderr, env
		t.Logf("%s run: %s", phase.name, strings.Join(cmd.Args, " "))
		if err := cmd.Run(); err != nil {
			runErrs = append(runErrs, fmt.Errorf("%s run: %w", phase.name, err))
		}
		got, err := readReport(filepath.Join(report, "report-"+phase.name+".json"))
		if err != nil {
			t.Fatalf("the suite's %s report (%v): %v", phase.name, runErrs, err)
		}
		specs = mergeReports(specs, got)
	}
	sum := summarize(specs, skips, suiteSkips)
	text := sum.String()
	fmt.Println(text)
	_ = os.WriteFile(filepath.Join(report, "summary.md"), []byte(text), 0o644)
	t.Logf("report, summary and logs in %s (cluster logs in %s)", report, e.dir)
	for _, f := range sum.failed {
		t.Errorf("failed: %s", f)
	}
	for _, s := range sum.unaccounted {
		t.Errorf("skipped with no reason on record: %s", s)
	}
	for _, u := range sum.unused {
		t.Errorf("skip entry matches no skipped test (remove it): %s", u)
	}
	if sum.passed == 0 {
		t.Errorf("no test passed")
	}
	if len(runErrs) > 0 && len(sum.failed) == 0 {
		t.Errorf("ginkgo: %v, with no failed test in its reports", runErrs)
	}
}

// skipEntry is one entry of a skip list: the tests (or the suite's skip
// messages) a regular expression matches, and why they do not run here.
type skipEntry struct {
	Match  string `json:"match"`
	Reason string `json:"reason"`
	re     *regexp.Regexp
}

// readSkipList reads a list of skip entries; every entry needs a reason.
func readSkipList(path string) ([]skipEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var list []skipEntry
	if err := yaml.UnmarshalStrict(b, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i := range list {
		if strings.TrimSpace(list[i].Reason) == "" {
			return nil, fmt.Errorf("%s: entry %q has no reason", path, list[i].Match)
		}
		if list[i].re, err = regexp.Compile(list[i].Match); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return list, nil
}

// skipRegexp is the ginkgo --skip expression of a skip list.
func skipRegexp(list []skipEntry) string {
	parts := make([]string, len(list))
	for i, s := range list {
		parts[i] = "(" + s.Match + ")"
	}
	return strings.Join(parts, "|")
}

// matching is the first entry whose expression matches s, or nil.
func matching(list []skipEntry, s string) *skipEntry {
	for i := range list {
		if list[i].re.MatchString(s) {
			return &list[i]
		}
	}
	return nil
}

// spec is what the summary reads of one entry of ginkgo's JSON report.
type spec struct {
	ContainerHierarchyTexts []string
	LeafNodeText            string
	LeafNodeType            string
	State                   string
	Failure                 struct{ Message string }
}

func (s spec) name() string {
	return strings.TrimSpace(strings.Join(append(slices.Clone(s.ContainerHierarchyTexts), s.LeafNodeText), " "))
}

// readReport reads ginkgo's JSON report: a list of suites, each with its
// specs.
func readReport(path string) ([]spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var suites []struct{ SpecReports []spec }
	if err := json.Unmarshal(b, &suites); err != nil {
		return nil, err
	}
	var all []spec
	for _, s := range suites {
		all = append(all, s.SpecReports...)
	}
	return all, nil
}

// mergeReports merges the specs of a second run into those of the first:
// a spec either run filtered out (skipped, no message) takes the other
// run's entry.
func mergeReports(a, b []spec) []spec {
	if a == nil {
		return b
	}
	index := map[string]int{}
	for i, s := range a {
		index[s.LeafNodeType+" "+s.name()] = i
	}
	for _, s := range b {
		i, ok := index[s.LeafNodeType+" "+s.name()]
		switch {
		case !ok:
			a = append(a, s)
		case s.LeafNodeType != "It":
			// Suite nodes (BeforeSuite...) run in both: a failure in either counts.
			if s.State != "passed" && s.State != "skipped" {
				a[i] = s
			}
		case a[i].State == "skipped" && a[i].Failure.Message == "" && (s.State != "skipped" || s.Failure.Message != ""):
			a[i] = s
		}
	}
	return a
}

// summary counts the tests the suite ran, and accounts for every skip.
type summary struct {
	passed      int
	failed      []string
	listed      map[string][]string // skip-list reason -> tests
	suite       map[string][]string // the suite's own skip, by our reason -> tests
	unaccounted []string
	unused      []string // skip entries that matched no test: stale
}

// summarize sorts the specs of the focus: those the skip list names were
// filtered out by --skip, those the suite skipped by itself carry its
// message, which suiteSkips must account for.
func summarize(specs []spec, skips, suiteSkips []skipEntry) summary {
	sum := summary{listed: map[string][]string{}, suite: map[string][]string{}}
	used := map[*skipEntry]bool{}
	for _, s := range specs {
		if s.LeafNodeType != "It" {
			if s.State != "passed" && s.State != "skipped" {
				sum.failed = append(sum.failed, s.LeafNodeType+": "+firstLine(s.Failure.Message))
			}
			continue
		}
		name := s.name()
		if !regexp.MustCompile(*confFocus).MatchString(name) {
			continue
		}
		switch s.State {
		case "passed":
			sum.passed++
		case "skipped":
			if e := matching(skips, name); e != nil {
				sum.listed[e.Reason] = append(sum.listed[e.Reason], name)
				used[e] = true
			} else if e := matching(suiteSkips, s.Failure.Message); e != nil && s.Failure.Message != "" {
				sum.suite[e.Reason] = append(sum.suite[e.Reason], name)
				used[e] = true
			} else {
				sum.unaccounted = append(sum.unaccounted, name+": "+firstLine(s.Failure.Message))
			}
		default:
			sum.failed = append(sum.failed, s.State+": "+name+": "+firstLine(s.Failure.Message))
		}
	}
	for _, l := range []struct {
		file    string
		entries []skipEntry
	}{{skipListFile, skips}, {suiteSkipsFile, suiteSkips}} {
		for i := range l.entries {
			if !used[&l.entries[i]] {
				sum.unused = append(sum.unused, l.file+": "+l.entries[i].Match)
			}
		}
	}
	return sum
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}

// String is the summary docs/conformance.md quotes: counts, and each skip
// reason with its number of tests.
func (s summary) String() string {
	count := func(m map[string][]string) int {
		n := 0
		for _, v := range m {
			n += len(v)
		}
		return n
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Kubernetes external storage suite: %d passed, %d failed, %d skipped\n\n",
		s.passed, len(s.failed), count(s.listed)+count(s.suite)+len(s.unaccounted))
	section := func(title string, m map[string][]string) {
		if len(m) == 0 {
			return
		}
		fmt.Fprintf(&b, "### %s\n\n| tests | reason |\n|---:|---|\n", title)
		reasons := make([]string, 0, len(m))
		for r := range m {
			reasons = append(reasons, r)
		}
		slices.SortFunc(reasons, func(a, c string) int { return len(m[c]) - len(m[a]) })
		for _, r := range reasons {
			fmt.Fprintf(&b, "| %d | %s |\n", len(m[r]), strings.ReplaceAll(r, "\n", " "))
		}
		b.WriteString("\n")
	}
	section("Skipped by the suite itself (conformance/suite-skips.yaml)", s.suite)
	section("Skipped by the skip list (conformance/skips.yaml)", s.listed)
	for _, f := range s.failed {
		fmt.Fprintf(&b, "- FAILED %s\n", f)
	}
	for _, u := range s.unaccounted {
		fmt.Fprintf(&b, "- SKIPPED, no reason on record: %s\n", u)
	}
	for _, u := range s.unused {
		fmt.Fprintf(&b, "- STALE skip entry, matches no test: %s\n", u)
	}
	return b.String()
}
