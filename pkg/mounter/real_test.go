package mounter

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// The tests in this file run the real tools on loop devices backed by sparse
// files; they need root (testutil.RequireRoot) and clean up every mount.

const (
	uuidA = "0b9f8a1e-3c2d-4e4f-8a6b-7c8d9e0f1a2b"
	uuidB = "11111111-2222-4333-8444-555555555555"
	// xfsSize: mkfs.xfs refuses filesystems under 300 MB since xfsprogs 5.19.
	xfsSize = 320 << 20
)

// tool runs a command that must succeed and returns its combined output.
func tool(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dumpe2fs returns the value of one field of "dumpe2fs -h".
func dumpe2fs(t *testing.T, dev, field string) string {
	t.Helper()
	out := tool(t, "", "dumpe2fs", "-h", dev)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(field) + `:\s*(.*)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dumpe2fs -h %s has no %q:\n%s", dev, field, out)
	}
	return strings.TrimSpace(m[1])
}

func writeAt(t *testing.T, dev string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, dev string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// mountDir makes a directory and unmounts whatever is left on it when the
// test ends (before the loop devices are detached).
func mountDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 4; i++ {
			if exec.Command("mountpoint", "-q", dir).Run() != nil {
				return
			}
			exec.Command("umount", dir).Run()
		}
	})
	return dir
}

// mountsAtPath returns the mountinfo entries at path.
func mountsAtPath(t *testing.T, r *Real, path string) []string {
	t.Helper()
	infos, err := r.MountInfo()
	if err != nil {
		t.Fatal(err)
	}
	var opts []string
	for _, mi := range infos {
		if mi.MountPoint == path {
			opts = append(opts, strings.Join(mi.MountOptions, ","))
		}
	}
	return opts
}

func TestProbeOnLoop(t *testing.T) {
	ctx := context.Background()
	r := New()

	blank := testutil.NewLoop(t, "", 64<<20)
	p, err := r.Probe(ctx, blank.Path)
	if err != nil || len(p.Signatures) != 0 || p.FSType != "" || p.UUID != "" {
		t.Fatalf("blank: %+v %v", p, err)
	}

	ext4 := testutil.NewLoop(t, "", 64<<20)
	tool(t, "", "mkfs.ext4", "-q", "-U", uuidA, ext4.Path)
	if p, err := r.Probe(ctx, ext4.Path); err != nil || p.FSType != "ext4" || p.UUID != uuidA || strings.Join(p.Signatures, ",") != "ext4" {
		t.Fatalf("ext4: %+v %v", p, err)
	}

	xfs := testutil.NewLoop(t, "", xfsSize)
	tool(t, "", "mkfs.xfs", "-q", "-m", "uuid="+uuidB, xfs.Path)
	if p, err := r.Probe(ctx, xfs.Path); err != nil || p.FSType != "xfs" || p.UUID != uuidB || strings.Join(p.Signatures, ",") != "xfs" {
		t.Fatalf("xfs: %+v %v", p, err)
	}

	gpt := testutil.NewLoop(t, "", 64<<20)
	tool(t, "label: gpt\n,1M\n", "sfdisk", "--quiet", gpt.Path)
	if p, err := r.Probe(ctx, gpt.Path); err != nil || p.FSType != "" || !contains(p.Signatures, "gpt") || !contains(p.Signatures, "PMBR") {
		t.Fatalf("gpt: %+v %v", p, err)
	}

	// A DOS partition table (sector 0) written over ext4 (superblock at
	// 1 KiB): both show.
	both := testutil.NewLoop(t, "", 64<<20)
	tool(t, "", "mkfs.ext4", "-q", both.Path)
	tool(t, "label: dos\n,1M\n", "sfdisk", "--quiet", "--wipe=never", both.Path)
	if p, err := r.Probe(ctx, both.Path); err != nil || !contains(p.Signatures, "dos") || !contains(p.Signatures, "ext4") {
		t.Fatalf("dos over ext4: %+v %v", p, err)
	}

	// Two filesystems: blkid says "ambivalent" (exit 8), wipefs names both.
	amb := testutil.NewLoop(t, "", 64<<20)
	tool(t, "", "mkfs.ext4", "-q", amb.Path)
	writeAt(t, amb.Path, 0, readAt(t, xfs.Path, 0, 512)) // the xfs superblock
	p, err = r.Probe(ctx, amb.Path)
	if err != nil || p.FSType != "" || !contains(p.Signatures, "ambivalent") || !contains(p.Signatures, "xfs") || !contains(p.Signatures, "ext4") {
		t.Fatalf("ambivalent: %+v %v", p, err)
	}

	if _, err := r.Probe(ctx, "/dev/no-such-device"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing device: %v", err)
	}
}

// TestProbeRefusesUnreadableDevice: blkid and wipefs call a device node they
// cannot open blank; Probe must fail instead, or such a device could be
// taken for a free disk.
func TestProbeRefusesUnreadableDevice(t *testing.T) {
	testutil.RequireRoot(t)
	node := t.TempDir() + "/dead"
	// Loop minor 250 is never attached by the tests: opening it fails.
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(7, 250))); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("blkid", "-p", node).CombinedOutput(); exitCodeOf(err) != 2 {
		t.Fatalf("premise: blkid on an unopenable node: %v %s", err, out)
	}
	if p, err := New().Probe(context.Background(), node); err == nil {
		t.Fatalf("Probe of an unopenable device = %+v, nil; want an error", p)
	}
}

func exitCodeOf(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return 0
}

func TestFormatExt4OnLoop(t *testing.T) {
	ctx := context.Background()
	r := New()
	l := testutil.NewLoop(t, "", 64<<20)
	// Data in the middle of the device, clear of the backup superblocks
	// (1 KiB blocks: every 8 MiB): a discard would punch it out.
	marker := randomBytes(4096)
	writeAt(t, l.Path, 44<<20, marker)
	if err := r.Format(ctx, l.Path, "ext4", uuidA, 0, []string{"-L", "mylabel", "-m", "0", "-E", "stride=4"}); err != nil {
		t.Fatal(err)
	}
	p, err := r.Probe(ctx, l.Path)
	if err != nil || p.FSType != "ext4" || p.UUID != uuidA {
		t.Fatalf("after format: %+v %v", p, err)
	}
	if got := strings.TrimSpace(tool(t, "", "blkid", "-p", "-s", "UUID", "-o", "value", l.Path)); got != uuidA {
		t.Fatalf("blkid UUID %q, want %q", got, uuidA)
	}
	for field, want := range map[string]string{
		"Filesystem volume name": "mylabel", // -L
		"Reserved block count":   "0",       // -m 0
		"RAID stride":            "4",       // user -E merged with the defaults
		"Filesystem UUID":        uuidA,
	} {
		if got := dumpe2fs(t, l.Path, field); got != want {
			t.Errorf("%s: %q, want %q", field, got, want)
		}
	}
	// lazy_itable_init=1: no group has its inode table zeroed.
	if out := tool(t, "", "dumpe2fs", l.Path); strings.Contains(out, "ITABLE_ZEROED") {
		t.Errorf("inode tables zeroed: lazy_itable_init not in effect")
	}
	// nodiscard: the data past the metadata survives.
	if got := readAt(t, l.Path, 44<<20, 4096); !bytes.Equal(got, marker) {
		t.Errorf("data at 44 MiB changed by mkfs: discarded or zeroed")
	}

	// A user key overrides a default: -E lazy_itable_init=0 zeroes the tables.
	l2 := testutil.NewLoop(t, "", 64<<20)
	if err := r.Format(ctx, l2.Path, "ext4", uuidB, 0, []string{"-Elazy_itable_init=0"}); err != nil {
		t.Fatal(err)
	}
	if out := tool(t, "", "dumpe2fs", l2.Path); !strings.Contains(out, "ITABLE_ZEROED") {
		t.Errorf("user -E lazy_itable_init=0 lost: no inode table zeroed")
	}
}

func TestFormatXFSOnLoop(t *testing.T) {
	ctx := context.Background()
	r := New()
	l := testutil.NewLoop(t, "", xfsSize)
	if err := r.Format(ctx, l.Path, "xfs", uuidB, 0, []string{"-L", "lbl", "-m", "reflink=0", "-K"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(tool(t, "", "blkid", "-p", "-s", "LABEL", "-o", "value", l.Path)); got != "lbl" {
		t.Errorf("label %q", got)
	}
	if got := strings.TrimSpace(tool(t, "", "blkid", "-p", "-s", "UUID", "-o", "value", l.Path)); got != uuidB {
		t.Errorf("uuid %q", got)
	}
	if out := tool(t, "", "xfs_db", "-r", "-c", "version", l.Path); strings.Contains(out, "REFLINK") {
		t.Errorf("-m reflink=0 merged with uuid= lost: %s", out)
	}
}

// TestFormatSizeLimitOnLoop: with sizeBytes the filesystem ends there and the
// tail of the device (where a pin lives) is untouched.
func TestFormatSizeLimitOnLoop(t *testing.T) {
	ctx := context.Background()
	r := New()
	for _, c := range []struct {
		fs   string
		size int64
	}{{"ext4", 64 << 20}, {"xfs", xfsSize}} {
		l := testutil.NewLoop(t, "", c.size)
		tail := randomBytes(1 << 20)
		writeAt(t, l.Path, c.size-1<<20, tail)
		limit := c.size - 1<<20
		if err := r.Format(ctx, l.Path, c.fs, uuidA, limit, nil); err != nil {
			t.Fatal(err)
		}
		var fsBytes int64
		if c.fs == "ext4" {
			blocks, _ := strconv.ParseInt(dumpe2fs(t, l.Path, "Block count"), 10, 64)
			bs, _ := strconv.ParseInt(dumpe2fs(t, l.Path, "Block size"), 10, 64)
			fsBytes = blocks * bs
		} else {
			out := tool(t, "", "xfs_db", "-r", "-c", "sb 0", "-c", "print dblocks blocksize", l.Path)
			var dblocks, bs int64
			for _, line := range strings.Split(out, "\n") {
				k, v, _ := strings.Cut(line, " = ")
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				switch strings.TrimSpace(k) {
				case "dblocks":
					dblocks = n
				case "blocksize":
					bs = n
				}
			}
			fsBytes = dblocks * bs
		}
		if fsBytes <= 0 || fsBytes > limit || fsBytes < limit-64<<10 {
			t.Errorf("%s: filesystem of %d bytes, limit %d", c.fs, fsBytes, limit)
		}
		if got := readAt(t, l.Path, c.size-1<<20, 1<<20); !bytes.Equal(got, tail) {
			t.Errorf("%s: the reserved tail changed", c.fs)
		}
	}
}

func TestFormatRefusesNonBlankOnLoop(t *testing.T) {
	ctx := context.Background()
	r := New()
	l := testutil.NewLoop(t, "", 64<<20)
	if err := r.Format(ctx, l.Path, "ext4", uuidA, 0, []string{"-L", "keep"}); err != nil {
		t.Fatal(err)
	}
	for _, fs := range []string{"ext4", "xfs"} {
		if err := r.Format(ctx, l.Path, fs, uuidB, 0, nil); !errors.Is(err, ErrNotBlank) {
			t.Fatalf("format %s over ext4: %v", fs, err)
		}
	}
	if p, _ := r.Probe(ctx, l.Path); p.UUID != uuidA || dumpe2fs(t, l.Path, "Filesystem volume name") != "keep" {
		t.Fatalf("filesystem changed by a refused format: %+v", p)
	}
	gpt := testutil.NewLoop(t, "", 64<<20)
	tool(t, "label: gpt\n,1M\n", "sfdisk", "--quiet", gpt.Path)
	if err := r.Format(ctx, gpt.Path, "ext4", uuidA, 0, nil); !errors.Is(err, ErrNotBlank) {
		t.Fatalf("format over gpt: %v", err)
	}
	if err := r.Format(ctx, gpt.Path, "btrfs", uuidA, 0, nil); !errors.Is(err, ErrUnsupportedFS) {
		t.Fatalf("btrfs: %v", err)
	}
	// A failing mkfs reports its own words: xfs on a device under 300 MB.
	small := testutil.NewLoop(t, "", 64<<20)
	err := r.Format(ctx, small.Path, "xfs", uuidA, 0, nil)
	var te *ToolError
	if !errors.As(err, &te) || te.ExitCode == 0 || !strings.Contains(err.Error(), "mkfs.xfs") || !strings.Contains(te.Output, "300MB") || len(te.Output) > maxOutput+20 {
		t.Fatalf("mkfs.xfs on 64 MiB: %v", err)
	}
}

func TestMountOnLoop(t *testing.T) {
	ctx := context.Background()
	r := New()
	l := testutil.NewLoop(t, "", 64<<20)
	if err := r.Format(ctx, l.Path, "ext4", uuidA, 0, nil); err != nil {
		t.Fatal(err)
	}
	dir := mountDir(t)
	if err := r.Mount(l.Path, dir, "ext4", []string{"noatime", "nodev"}); err != nil {
		t.Fatal(err)
	}
	opts := mountsAtPath(t, r, dir)
	if len(opts) != 1 || !strings.Contains(opts[0], "noatime") || !strings.Contains(opts[0], "nodev") || !strings.HasPrefix(opts[0], "rw") {
		t.Fatalf("mountinfo at %s: %q", dir, opts)
	}
	// The mount carries the device's major:minor.
	infos, _ := r.MountInfo()
	rdev, err := r.DeviceNumber(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, mi := range infos {
		if mi.MountPoint == dir && (uint32(mi.Major) != unix.Major(rdev) || uint32(mi.Minor) != unix.Minor(rdev)) {
			t.Fatalf("mount %d:%d, device %d:%d", mi.Major, mi.Minor, unix.Major(rdev), unix.Minor(rdev))
		}
	}

	// FSStats: total about the filesystem size, used grows with a 1 MiB file.
	s0, err := r.FSStats(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s0.TotalBytes < 50<<20 || s0.TotalBytes > 64<<20 || s0.AvailableBytes > s0.TotalBytes-s0.UsedBytes ||
		s0.TotalInodes <= 0 || s0.UsedInodes+s0.FreeInodes != s0.TotalInodes {
		t.Fatalf("stats %+v", s0)
	}
	data := randomBytes(1 << 20)
	if err := os.WriteFile(filepath.Join(dir, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	s1, _ := r.FSStats(dir)
	if s1.UsedBytes-s0.UsedBytes < 1<<20 || s1.UsedInodes != s0.UsedInodes+1 {
		t.Fatalf("after writing 1 MiB: %+v, before %+v", s1, s0)
	}

	// A mounted device is neither formatted nor wiped.
	if err := r.Wipe(ctx, l.Path, CleanupSignatures, WipeOptions{}); err == nil || !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("wipe of a mounted device: %v", err)
	}
	if err := r.Unmount(dir); err != nil {
		t.Fatal(err)
	}
	if opts := mountsAtPath(t, r, dir); len(opts) != 0 {
		t.Fatalf("still mounted: %q", opts)
	}
	var te *ToolError
	if err := r.Unmount(dir); !errors.As(err, &te) {
		t.Fatalf("unmount of a directory that is not mounted: %v", err)
	}
	if err := r.Mount(l.Path, dir, "ext4", []string{"ro"}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file after remount: %d bytes, %v", len(got), err)
	}
	if err := os.WriteFile(filepath.Join(dir, "g"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write on a ro mount: %v", err)
	}
	if err := r.Unmount(dir); err != nil {
		t.Fatal(err)
	}
	if err := r.Mount(l.Path, dir, "xfs", nil); err == nil {
		t.Fatal("mounting ext4 as xfs worked")
	}
}

func TestBindMountOnLoop(t *testing.T) {
	ctx := context.Background()
	r := New()
	l := testutil.NewLoop(t, "", 64<<20)
	if err := r.Format(ctx, l.Path, "ext4", uuidA, 0, nil); err != nil {
		t.Fatal(err)
	}
	staging := mountDir(t)
	if err := r.Mount(l.Path, staging, "ext4", []string{"nosuid"}); err != nil {
		t.Fatal(err)
	}
	rw, ro := mountDir(t), mountDir(t)
	if err := r.BindMount(staging, rw, false); err != nil {
		t.Fatal(err)
	}
	if err := r.BindMount(staging, ro, true); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rw, "f"), []byte("hello"), 0o644); err != nil {
		t.Fatalf("write through the rw bind: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(ro, "f")); err != nil || string(b) != "hello" {
		t.Fatalf("read through the ro bind: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(ro, "g"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write through the ro bind: %v, want EROFS", err)
	}
	if opts := mountsAtPath(t, r, ro); len(opts) != 1 || !strings.HasPrefix(opts[0], "ro") || !strings.Contains(opts[0], "nosuid") {
		t.Fatalf("ro bind options %q (nosuid of the source kept)", opts)
	}
	// The staging mount itself stays writable.
	if err := os.WriteFile(filepath.Join(staging, "h"), nil, 0o644); err != nil {
		t.Fatalf("staging turned read-only: %v", err)
	}
	for _, d := range []string{ro, rw, staging} {
		if err := r.Unmount(d); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBindMountDeviceNodeOnLoop(t *testing.T) {
	r := New()
	l := testutil.NewLoop(t, "", 16<<20)
	head := randomBytes(8192)
	writeAt(t, l.Path, 0, head)
	file := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("umount", file).Run() })
	if err := r.BindMount(l.Path, file, true); err != nil {
		t.Fatal(err)
	}
	if got := readAt(t, file, 0, 8192); !bytes.Equal(got, head) {
		t.Fatal("the bind-mounted file does not read the device's bytes")
	}
	if n, err := r.DeviceSize(file); err != nil || n != 16<<20 {
		t.Fatalf("DeviceSize of the bound file: %d %v", n, err)
	}
	want, _ := r.DeviceNumber(l.Path)
	if got, err := r.DeviceNumber(file); err != nil || got != want {
		t.Fatalf("DeviceNumber of the bound file: %d %v, want %d", got, err, want)
	}
	// A read-only bind of a device node does not stop writes: the kernel
	// read-only flag does.
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("premise: a ro bind of a device node opens for writing: %v", err)
	}
	f.Close()
	if err := r.SetDeviceReadOnly(l.Path, true); err != nil {
		t.Fatal(err)
	}
	if f, err := os.OpenFile(file, os.O_WRONLY, 0); err == nil {
		_, werr := f.WriteAt([]byte("x"), 0)
		f.Close()
		if werr == nil {
			t.Fatal("write to a read-only device worked")
		}
	}
	if out := strings.TrimSpace(tool(t, "", "blockdev", "--getro", l.Path)); out != "1" {
		t.Fatalf("blockdev --getro: %s", out)
	}
	if err := r.SetDeviceReadOnly(l.Path, false); err != nil {
		t.Fatal(err)
	}
	writeAt(t, file, 0, []byte("x"))
	if err := r.Unmount(file); err != nil {
		t.Fatal(err)
	}
}

func TestWipeOnLoop(t *testing.T) {
	ctx := context.Background()
	r := New()
	const size = 64 << 20
	offsets := []int64{0, 4096, 17<<20 + 123, 40 << 20, size - 4096}
	for _, policy := range []CleanupPolicy{CleanupSignatures, CleanupDiscard, CleanupZero, CleanupShred} {
		t.Run(string(policy), func(t *testing.T) {
			l := testutil.NewLoop(t, "", size)
			if err := r.Format(ctx, l.Path, "ext4", uuidA, 0, nil); err != nil {
				t.Fatal(err)
			}
			tool(t, "label: gpt\n,1M\n", "sfdisk", "--quiet", "--wipe=never", l.Path)
			if policy == CleanupZero {
				for _, off := range offsets[1:] {
					writeAt(t, l.Path, off, randomBytes(4096))
				}
			}
			// A crash can leave the device read-only: Wipe clears that.
			if err := r.SetDeviceReadOnly(l.Path, true); err != nil {
				t.Fatal(err)
			}
			if err := r.Wipe(ctx, l.Path, policy, WipeOptions{}); err != nil {
				t.Fatal(err)
			}
			if p, err := r.Probe(ctx, l.Path); err != nil || len(p.Signatures) != 0 {
				t.Fatalf("after wipe: %+v %v", p, err)
			}
			if out, err := exec.Command("blkid", "-p", l.Path).CombinedOutput(); exitCodeOf(err) != 2 {
				t.Fatalf("blkid -p after wipe: %v %s", err, out)
			}
			if policy == CleanupZero || policy == CleanupShred {
				b, err := os.ReadFile(l.Path)
				if err != nil || len(b) != size {
					t.Fatalf("read back %d bytes: %v", len(b), err)
				}
				if i := bytes.IndexFunc(b, func(r rune) bool { return r != 0 }); i >= 0 {
					t.Fatalf("byte %d not zero after %s", i, policy)
				}
			}
		})
	}
	l := testutil.NewLoop(t, "", 16<<20)
	if err := r.Wipe(ctx, l.Path, "none", WipeOptions{}); !errors.Is(err, ErrUnknownPolicy) {
		t.Fatalf("unknown policy: %v", err)
	}
}

func TestDeviceSizeAndNumber(t *testing.T) {
	r := New()
	l := testutil.NewLoop(t, "", 16<<20)
	if n, err := r.DeviceSize(l.Path); err != nil || n != 16<<20 {
		t.Fatalf("size %d %v", n, err)
	}
	if _, err := r.DeviceSize(l.Backing); !errors.Is(err, ErrNotBlockDevice) {
		t.Fatalf("size of a regular file: %v", err)
	}
	if _, err := r.DeviceNumber(l.Backing); !errors.Is(err, ErrNotBlockDevice) {
		t.Fatalf("number of a regular file: %v", err)
	}
	if _, err := r.DeviceNumber("/no/such"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("number of a missing path: %v", err)
	}
	if _, err := r.DeviceSize("/no/such"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("size of a missing path: %v", err)
	}
}

// TestFormatLargeSparse times Format of a 20 GiB sparse loop device, which
// must not depend much on the size. LARGE_FORMAT=1 runs it.
func TestFormatLargeSparse(t *testing.T) {
	if os.Getenv("LARGE_FORMAT") == "" {
		t.Skip("LARGE_FORMAT=1 runs it")
	}
	r := New()
	for _, fs := range []string{"ext4", "xfs"} {
		l := testutil.NewLoop(t, "", 20<<30)
		start := time.Now()
		if err := r.Format(context.Background(), l.Path, fs, uuidA, 0, nil); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		unix.Sync()
		var st unix.Stat_t
		unix.Stat(l.Backing, &st)
		t.Logf("%s on 20 GiB: %v, %d MiB allocated in the backing file", fs, took, st.Blocks*512>>20)
	}
}
