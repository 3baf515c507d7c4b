package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestImageArchives imports the busybox archive and the e2e images' archive
// into a containerd of its own, as a real node does, checks every name
// arrived, and runs a container of each image doing what Kubernetes'
// storage tests ask of it.
func TestImageArchives(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("TestImageArchives runs containerd and runc containers, which need root, and CI runs it")
		}
		t.Skip("runs containerd and runc containers, which need root; CI runs it as root")
	}
	agnhost := filepath.Join(e2eBinDir(), "agnhost")
	if _, err := os.Stat(agnhost); err != nil {
		t.Fatalf("no agnhost: run make e2e-bins (%v)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	busybox, images := filepath.Join(dir, "busybox.oci.tar"), filepath.Join(dir, "images.oci.tar")
	if err := buildBusyboxOCI(hostBusybox, busybox); err != nil {
		t.Fatal(err)
	}
	if err := WriteTestImages(images, agnhost); err != nil {
		t.Fatal(err)
	}
	c := startScratchContainerd(ctx, t, dir)
	for _, archive := range []string{busybox, images} {
		if out, err := c.ctr(ctx, "images", "import", archive); err != nil {
			t.Fatalf("import %s: %v: %s", archive, err, out)
		}
	}
	listed, err := c.ctr(ctx, "images", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range append([]string{BusyboxImage}, TestImages...) {
		if !strings.Contains(listed+"\n", name+"\n") {
			t.Errorf("%s not imported; the images: %s", name, listed)
		}
	}
	if t.Failed() {
		return
	}
	t.Run("run", func(t *testing.T) { runImageChecks(ctx, t, c) })
	t.Run("pause", func(t *testing.T) {
		// agnhost pause reports SIGTERM with exit code 2, the pause binary
		// exits 0.
		c.pausesUntilTERM(ctx, t, AgnhostImage, "agnhost-pause", 2)
		c.pausesUntilTERM(ctx, t, PauseImage, "pause", 0)
	})
}

// runImageChecks runs commands like the storage tests' in each image and
// looks for their output. A command given to ctr run replaces the image's
// entrypoint too, as a container's command does in Kubernetes.
func runImageChecks(ctx context.Context, t *testing.T, c *scratchContainerd) {
	for _, tc := range []struct {
		image string
		args  []string
		want  []string
	}{
		{AgnhostImage, []string{"/agnhost", "--help"}, []string{"mounttest", "pause"}},
		// The subpath tests' containers: agnhost mounttest.
		{AgnhostImage, []string{"/agnhost", "mounttest", "--new_file_0644=/tmp/f", "--file_perm=/tmp/f"}, []string{"mount-tester new file", "-rw-r--r--"}},
		{E2EBusyboxImage, []string{"sh", "-c", "i=0; let i+=1; echo -n $i | base64 | base64 -d; stat -f -c ' %s' /; stat -c 'tmp %a' /tmp"}, []string{"1 ", "tmp 1777"}},
		{BusyboxImage, []string{"sh", "-c", "echo hello"}, []string{"hello"}},
		// volumes.go's exec test, the only use of nginx in the storage tests.
		{NginxImage, []string{"/bin/sh", "-ec", `echo "ls /tmp" > /tmp/t.sh; chmod u+x /tmp/t.sh; /tmp/t.sh;`}, []string{"t.sh"}},
		// multivolume.go's write on block volumes: GNU dd's oflag=nocache.
		{GlibcDNSTestingImage, []string{"sh", "-c", "echo hello | dd of=/tmp/f oflag=nocache bs=6 count=1 status=none && cat /tmp/f && dd --version && command -v blockdev sha256sum base64"}, []string{"hello", "coreutils", "/bin/blockdev"}},
	} {
		out, err := c.ctr(ctx, append([]string{"run", "--rm", tc.image, c.id()}, tc.args...)...)
		if err != nil {
			t.Errorf("%s %q: %v: %s", tc.image, tc.args, err, out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s %q printed no %q: %s", tc.image, tc.args, w, out)
			}
		}
	}
}

// pausesUntilTERM starts image with its default command and checks the
// task keeps running until SIGTERM, then exits with wantExit.
func (c *scratchContainerd) pausesUntilTERM(ctx context.Context, t *testing.T, image, id string, wantExit int) {
	if out, err := c.ctr(ctx, "run", "-d", "--null-io", image, id); err != nil {
		t.Errorf("%s: %v: %s", image, err, out)
		return
	}
	defer c.ctr(ctx, "containers", "delete", id)
	defer c.ctr(ctx, "tasks", "delete", "--force", id)
	// Still running after a second: the default command does not exit.
	time.Sleep(time.Second)
	if st := c.taskStatus(ctx, id); st != "RUNNING" {
		t.Errorf("%s: task %s, want RUNNING", image, st)
		return
	}
	if out, err := c.ctr(ctx, "tasks", "kill", "-s", "SIGTERM", id); err != nil {
		t.Errorf("%s: kill: %v: %s", image, err, out)
		return
	}
	if err := waitFor(ctx, nil, image+" stops on SIGTERM", func() error {
		if st := c.taskStatus(ctx, id); st != "STOPPED" {
			return fmt.Errorf("task %s", st)
		}
		return nil
	}); err != nil {
		t.Error(err)
		return
	}
	out, err := c.ctr(ctx, "tasks", "delete", id)
	if err != nil {
		t.Errorf("%s: delete: %v: %s", image, err, out)
		return
	}
	if code := exitCode(out); code != wantExit {
		t.Errorf("%s exited with %d on SIGTERM, want %d", image, code, wantExit)
	}
}

// exitCode reads the exit code `ctr tasks delete` warns about; it says
// nothing of an exit code 0.
func exitCode(out string) int {
	code := 0
	if m := regexp.MustCompile(`non-zero exit code (\d+)`).FindStringSubmatch(out); m != nil {
		code, _ = strconv.Atoi(m[1])
	}
	return code
}

// scratchContainerd is a containerd with its root, state and socket in a
// test's directory, and a namespace of its own.
type scratchContainerd struct {
	sock string
	ns   string
	n    int
}

// Its namespace, hence the parent of its containers' cgroups.
const scratchNamespace = "e2e-image-test"

// startScratchContainerd starts containerd under dir; cleanup removes its
// containers and tasks, stops it by PID, unmounts what it mounted and
// removes the cgroups its containers made.
func startScratchContainerd(ctx context.Context, t *testing.T, dir string) *scratchContainerd {
	c := &scratchContainerd{sock: filepath.Join(dir, "containerd.sock"), ns: scratchNamespace}
	cfg := filepath.Join(dir, "config.toml")
	// Neither Kubernetes' runtime interface nor the snapshotters this
	// machine lacks: only images and plain containers.
	if err := os.WriteFile(cfg, []byte(containerdConfig(dir, c.sock, []string{"io.containerd.grpc.v1.cri"})), 0o600); err != nil {
		t.Fatal(err)
	}
	cgroups := newCgroups(c.ns)
	var ps procs
	p, err := ps.start(dir, "containerd", "containerd", "--config", cfg, "--log-level=warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.removeAll()
		ps.stopAll()
		unmountUnder(dir)
		removeCgroups(cgroups)
	})
	if err := waitFor(ctx, p, "containerd", func() error {
		_, err := c.ctr(ctx, "version")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *scratchContainerd) ctr(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.sock, "-n", c.ns}, args...)...).CombinedOutput()
	return string(out), err
}

// id names a new container.
func (c *scratchContainerd) id() string {
	c.n++
	return fmt.Sprintf("c%d", c.n)
}

// taskStatus is the STATUS column of `ctr tasks ls` for id.
func (c *scratchContainerd) taskStatus(ctx context.Context, id string) string {
	out, _ := c.ctr(ctx, "tasks", "ls")
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == id {
			return f[2]
		}
	}
	return "absent"
}

// removeAll kills and deletes every task and container left, so that no
// shim outlives containerd. It has a context of its own: the test's may
// have ended.
func (c *scratchContainerd) removeAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tasks, _ := c.ctr(ctx, "tasks", "ls", "-q")
	for _, id := range strings.Fields(tasks) {
		c.ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
		c.ctr(ctx, "tasks", "delete", "--force", id)
	}
	containers, _ := c.ctr(ctx, "containers", "ls", "-q")
	for _, id := range strings.Fields(containers) {
		c.ctr(ctx, "containers", "delete", id)
	}
}

// e2eBinDir is where `make e2e-bins` puts the binaries.
func e2eBinDir() string {
	if dir := os.Getenv("E2E_BIN"); dir != "" {
		return dir
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache/ecs-localdisk-csi/e2e/bin")
}
