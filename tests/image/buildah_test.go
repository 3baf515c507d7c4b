package image

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// store is a private buildah image store under one directory: every
// container, image and layer the tests make lives there, so nothing
// outside it is touched and removing it removes them all.
type store struct {
	dir string
}

// cmd is buildah with args, on this store.
func (s store) cmd(args ...string) *exec.Cmd {
	full := append([]string{
		"--root", filepath.Join(s.dir, "root"),
		"--runroot", filepath.Join(s.dir, "run"),
		"--storage-driver", "overlay",
	}, args...)
	c := exec.Command("buildah", full...)
	c.Env = append(os.Environ(), "TMPDIR="+filepath.Join(s.dir, "tmp"))
	return c
}

// run runs buildah with args and returns its trimmed stdout; an error
// carries stderr.
func (s store) run(args ...string) (string, error) {
	c := s.cmd(args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("buildah %s: %v\n%s", strings.Join(args, " "), err, tail(stderr.String(), 40))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// remove deletes every container and image of the store, unmounts what is
// left mounted under its directory and removes the directory.
func (s store) remove() error {
	var errs []string
	if _, err := s.run("rm", "--all"); err != nil {
		errs = append(errs, err.Error())
	}
	if _, err := s.run("rmi", "--all", "--force"); err != nil {
		errs = append(errs, err.Error())
	}
	if err := unmountUnder(s.dir); err != nil {
		errs = append(errs, err.Error())
	} else if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing the image store %s: %s", s.dir, strings.Join(errs, "; "))
	}
	return nil
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		// mountinfo escapes space, tab, newline and backslash as octal.
		mp := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// unmountUnder unmounts everything mounted at or below dir (debootstrap
// mounts proc and sysfs in its target; a failed run can leave them), and
// fails if anything is still mounted there, so the caller never removes a
// tree with a live mount in it.
func unmountUnder(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	for _, mp := range mps {
		if err := syscall.Unmount(mp, 0); err != nil {
			_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	}
	left, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("still mounted under %s: %v", dir, left)
	}
	return nil
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
