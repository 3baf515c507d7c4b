package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const log = `# Changelog

## [Unreleased]

### Added
- A thing.

## [0.0.9] - 2026-01-01

### Fixed
- Old.
`

func TestStampChangelog(t *testing.T) {
	got, err := stampChangelog(log, "v0.1.0", "2026-12-01")
	if err != nil {
		t.Fatal(err)
	}
	want := "# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2026-12-01\n\n### Added\n- A thing.\n\n## [0.0.9] - 2026-01-01\n"
	if !strings.HasPrefix(got, want) || !strings.HasSuffix(got, "- Old.\n") {
		t.Errorf("stamped:\n%s", got)
	}
	for name, in := range map[string]string{
		"released twice":  got,
		"empty":           "## [Unreleased]\n\n## [0.0.9] - 2026-01-01\n- x\n",
		"no unreleased":   "# Changelog\n",
		"two unreleased":  "## [Unreleased]\n- a\n## [Unreleased]\n- b\n",
		"same as earlier": strings.Replace(log, "0.0.9", "0.1.0", 1),
	} {
		if _, err := stampChangelog(in, "v0.1.0", "2026-12-01"); err == nil {
			t.Errorf("%s: stamped without an error", name)
		}
	}
}

func TestStampChart(t *testing.T) {
	got, err := stampChart("apiVersion: v2\nname: x\nversion: 0.0.1\nappVersion: \"v0.0.1\"\n", "v1.2.3-rc.1")
	if err != nil || got != "apiVersion: v2\nname: x\nversion: 1.2.3-rc.1\nappVersion: \"v1.2.3-rc.1\"\n" {
		t.Errorf("stampChart = %q, %v", got, err)
	}
	// The value only: a comment stays, the next line is never reached.
	got, err = stampChart("version: 0.0.1 # the chart\nappVersion:\nname: x\n", "v1.0.0")
	if err != nil || got != "version: 1.0.0 # the chart\nappVersion: \"v1.0.0\"\nname: x\n" {
		t.Errorf("stampChart = %q, %v", got, err)
	}
	if _, err := stampChart("apiVersion: v2\nversion: 0.0.1\n", "v1.0.0"); err == nil {
		t.Error("a chart without appVersion was stamped")
	}
}

// repo writes the files release stamps into a temporary root.
func repo(t *testing.T, chart string) string {
	root := t.TempDir()
	files := map[string]string{
		"VERSION":      "v0.1.0-dev\n",
		"CHANGELOG.md": log,
		"deploy/helm/ecs-localdisk-csi/Chart.yaml":                    chart,
		"deploy/kubernetes/overlays/ecs/kustomization.yaml":           "images:\n  - name: ecs-localdisk-csi\n    newTag:\n    newName: ecs-localdisk-csi\n",
		"deploy/kubernetes/overlays/static/kustomization.yaml":        "images:\n  - name: ecs-localdisk-csi\n    newTag: v0.0.9 # pinned\n",
		"deploy/kubernetes/overlays/static/other-unstamped-file.yaml": "newTag: untouched\n",
	}
	for rel, s := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func read(t *testing.T, root, rel string) string {
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRelease(t *testing.T) {
	root := repo(t, "apiVersion: v2\nname: ecs-localdisk-csi\nversion: 0.0.1\nappVersion: v0.0.1\n")
	if err := release(root, "v0.1.0", "2026-12-01"); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]string{
		"VERSION":      "v0.1.0\n",
		"CHANGELOG.md": "## [0.1.0] - 2026-12-01",
		"deploy/helm/ecs-localdisk-csi/Chart.yaml":                    "version: 0.1.0\nappVersion: \"v0.1.0\"\n",
		"deploy/kubernetes/overlays/ecs/kustomization.yaml":           "    newTag: v0.1.0\n    newName: ecs-localdisk-csi\n",
		"deploy/kubernetes/overlays/static/kustomization.yaml":        "    newTag: v0.1.0 # pinned\n",
		"deploy/kubernetes/overlays/static/other-unstamped-file.yaml": "newTag: untouched\n",
	} {
		if got := read(t, root, rel); !strings.Contains(got, want) {
			t.Errorf("%s:\n%s\nwant it to contain %q", rel, got, want)
		}
	}
	if err := release(root, "v0.1.0", "2026-12-02"); err == nil {
		t.Error("the same version was released twice")
	}
}

// TestReleaseWritesAllOrNothing: a bad version, or one file without its
// line, leaves every file as it was.
func TestReleaseWritesAllOrNothing(t *testing.T) {
	for name, c := range map[string]struct{ chart, version string }{
		"chart without appVersion": {"apiVersion: v2\nversion: 0.0.1\n", "v0.1.0"},
		"no v":                     {"version: 0.0.1\nappVersion: v0.0.1\n", "0.1.0"},
		"build metadata":           {"version: 0.0.1\nappVersion: v0.0.1\n", "v0.1.0+abc"},
		"leading zero":             {"version: 0.0.1\nappVersion: v0.0.1\n", "v0.01.0"},
		"empty pre-release part":   {"version: 0.0.1\nappVersion: v0.0.1\n", "v1.0.0-rc..1"},
		"numeric with zero":        {"version: 0.0.1\nappVersion: v0.0.1\n", "v1.0.0-01"},
	} {
		t.Run(name, func(t *testing.T) {
			root := repo(t, c.chart)
			before := map[string]string{}
			for _, rel := range []string{"VERSION", "CHANGELOG.md", "deploy/kubernetes/overlays/ecs/kustomization.yaml"} {
				before[rel] = read(t, root, rel)
			}
			if err := release(root, c.version, "2026-12-01"); err == nil {
				t.Fatal("released")
			}
			for rel, s := range before {
				if read(t, root, rel) != s {
					t.Errorf("%s changed by a failed release", rel)
				}
			}
		})
	}
}

// TestRepositoryIsStamped: the repository's own VERSION, chart and overlays
// name one version, and a release (a version without a pre-release part)
// has its CHANGELOG section: what make release leaves, and what a hand edit
// of one of them breaks.
func TestRepositoryIsStamped(t *testing.T) {
	root := "../.."
	version := strings.TrimSpace(read(t, root, versionFile))
	if !semver.MatchString(version) {
		t.Fatalf("VERSION %q is not vMAJOR.MINOR.PATCH[-PRERELEASE]", version)
	}
	chartText := read(t, root, chart)
	if got := chartVersion.FindStringSubmatch(chartText); got == nil || got[0] != "version: "+strings.TrimPrefix(version, "v") {
		t.Errorf("%s: %q; want version: %s", chart, got, strings.TrimPrefix(version, "v"))
	}
	if got := chartAppVer.FindString(chartText); got != `appVersion: "`+version+`"` {
		t.Errorf("%s: %q; want appVersion: %q", chart, got, version)
	}
	kustomizations, _ := filepath.Glob(filepath.Join(root, overlays, "*", "kustomization.yaml"))
	if len(kustomizations) == 0 {
		t.Fatal("no overlay")
	}
	for _, k := range kustomizations {
		b, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		tags := newTagLine.FindAllString(string(b), -1)
		if len(tags) != 1 || strings.TrimSpace(tags[0]) != "newTag: "+version {
			t.Errorf("%s pins %q; want newTag: %s", k, tags, version)
		}
	}
	if !strings.Contains(version, "-") && !strings.Contains(read(t, root, changelog), "## ["+strings.TrimPrefix(version, "v")+"] - ") {
		t.Errorf("CHANGELOG.md has no section for the release %s", version)
	}
}
