package mounter

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestToolsAreListed: every command the code runs is in Tools, and only
// pkg/mounter runs commands.
func TestToolsAreListed(t *testing.T) {
	listed := map[string]bool{}
	for _, tool := range Tools {
		listed[tool] = true
	}
	run := regexp.MustCompile(`(?:r\.run|CommandContext)\(ctx, "([^"]+)"`)
	files, _ := filepath.Glob("*.go")
	found := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, _ := os.ReadFile(f)
		for _, m := range run.FindAllStringSubmatch(string(b), -1) {
			found++
			if m[1] == "mkfs." { // "mkfs."+fsType, checked below
				continue
			}
			if !listed[m[1]] {
				t.Errorf("%s runs %q, which is not in Tools", f, m[1])
			}
		}
		if strings.Contains(string(b), `"mkfs."+fsType`) && (!listed["mkfs.ext4"] || !listed["mkfs.xfs"]) {
			t.Errorf("mkfs.<fsType> tools not listed")
		}
	}
	if found < 5 {
		t.Fatalf("found only %d command calls: the pattern no longer matches the code", found)
	}
	others, _ := filepath.Glob("../*/*.go")
	for _, f := range others {
		if strings.HasPrefix(f, "../mounter/") || strings.HasSuffix(f, "_test.go") {
			continue
		}
		if b, _ := os.ReadFile(f); strings.Contains(string(b), "exec.Command") || strings.Contains(string(b), "utils/exec") {
			t.Errorf("%s runs commands outside pkg/mounter", f)
		}
	}
}

// TestDockerfileCarriesEveryTool maps each tool to the Debian package that
// ships it (dpkg -S on this Debian machine) and checks the Dockerfile's
// final stage installs that package.
func TestDockerfileCarriesEveryTool(t *testing.T) {
	if _, err := exec.LookPath("dpkg"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("dpkg is needed to map tools to packages, and CI runs on Debian")
		}
		t.Skip("needs dpkg (Debian) to map tools to packages")
	}
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	stages := strings.Split(string(b), "\nFROM ")
	final := stages[len(stages)-1]
	install := regexp.MustCompile(`apt-get install[^\n]*?((?:\s+[a-z0-9.+-]+)+)`).FindStringSubmatch(final)
	if install == nil {
		t.Fatal("no apt-get install in the Dockerfile's final stage")
	}
	packages := map[string]bool{}
	for _, p := range strings.Fields(install[1]) {
		packages[p] = true
	}
	for _, tool := range Tools {
		out, err := exec.Command("dpkg", "-S", "*bin/"+tool).CombinedOutput()
		if err != nil {
			t.Errorf("dpkg -S %s: %v %s", tool, err, out)
			continue
		}
		pkg, _, _ := strings.Cut(strings.TrimSpace(strings.Split(string(out), "\n")[0]), ":")
		if !packages[pkg] {
			t.Errorf("%s comes from Debian package %s, which the Dockerfile does not install (it installs %v)", tool, pkg, install[1])
		}
	}
}
