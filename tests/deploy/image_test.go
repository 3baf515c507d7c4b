package deploy

import (
	"bufio"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const repo = "../.."

// buildStageCopies returns the sources and destinations of the COPY lines
// of the Dockerfile's first (build) stage, and its WORKDIR.
func buildStageCopies(t *testing.T) (copies [][2]string, workdir string) {
	t.Helper()
	f, err := os.Open(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stages := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			stages++
		case "WORKDIR":
			if stages == 1 {
				workdir = fields[1]
			}
		case "COPY":
			if stages != 1 || len(fields) < 3 || strings.HasPrefix(fields[1], "--") {
				continue
			}
			dest := fields[len(fields)-1]
			for _, src := range fields[1 : len(fields)-1] {
				copies = append(copies, [2]string{src, dest})
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if stages < 2 || workdir == "" || len(copies) == 0 {
		t.Fatalf("Dockerfile: %d stages, WORKDIR %q, %d COPY sources in the build stage; want a build stage that copies the sources", stages, workdir, len(copies))
	}
	return copies, workdir
}

// copyTree copies the file or directory src to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestImageBuildStageInputsAreComplete builds the driver the way the
// Dockerfile's build stage does, in a directory that holds only what that
// stage copies: a package the build needs but the Dockerfile leaves out
// (as internal/ once was) fails here instead of in `make image`.
func TestImageBuildStageInputsAreComplete(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go tool on PATH: %v", err)
	}
	copies, workdir := buildStageCopies(t)
	dir := t.TempDir()
	for _, c := range copies {
		dest := c[1]
		if !filepath.IsAbs(dest) {
			dest = filepath.Join(workdir, dest)
		}
		rel, err := filepath.Rel(workdir, dest)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("COPY %s %s lands outside WORKDIR %s", c[0], c[1], workdir)
		}
		target := filepath.Join(dir, rel)
		if strings.HasSuffix(c[1], "/") || len(copies) > 1 && rel == "." {
			target = filepath.Join(target, filepath.Base(c[0]))
		}
		copyTree(t, filepath.Join(repo, c[0]), target)
	}
	for _, pkg := range []string{"./cmd/ecs-localdisk-csi", "./cmd/ecs-localdisk-csi-controller"} {
		cmd := exec.Command(goTool, "build", "-trimpath", "-o", filepath.Join(t.TempDir(), filepath.Base(pkg)), pkg)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building %s from only what the Dockerfile's build stage copies (%v) fails: %v\n%s", pkg, copies, err, out)
		}
	}
}
