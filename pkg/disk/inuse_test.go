package disk

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

func unmount(t *testing.T, path string) {
	t.Helper()
	if err := unix.Unmount(path, 0); err != nil {
		t.Fatalf("unmount %s: %v", path, err)
	}
}

// TestStaticDeviceNodeBindIsInUse: a blank device whose node is
// bind-mounted somewhere (another driver's published raw block volume) is
// reported mounted, with the mount points; a device node on a tmpfs (a
// container's /dev) counts too; once the binds are gone the next discovery
// reports the device free again.
func TestStaticDeviceNodeBindIsInUse(t *testing.T) {
	bound := testutil.NewLoop(t, "", 16<<20)
	onTmpfs := testutil.NewLoop(t, "", 16<<20)
	free := testutil.NewLoop(t, "", 16<<20)
	dir := t.TempDir()

	// The kubelet's chain: the driver binds the node onto a staging file,
	// the kubelet binds that onto the pod's file; paths with a space show
	// up escaped in mountinfo.
	staging := testutil.BindNode(t, bound.Path, filepath.Join(dir, "staging", "vol 1"))
	publish := testutil.BindNode(t, staging, filepath.Join(dir, "publish", "pod uid"))

	// A node of onTmpfs's number on a tmpfs, bound elsewhere; and a regular
	// tmpfs file bound the same way, which is no device at all.
	tmp := filepath.Join(dir, "ctr-dev")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", tmp, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(tmp, unix.MNT_DETACH) })
	majMin, err := blockDevNumber(onTmpfs.Path)
	if err != nil {
		t.Fatal(err)
	}
	mknod(t, filepath.Join(tmp, "disk"), majMin, unix.S_IFBLK)
	if err := os.WriteFile(filepath.Join(tmp, "not-a-disk"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctr := testutil.BindNode(t, filepath.Join(tmp, "disk"), filepath.Join(dir, "ctr", "xvda"))
	plain := testutil.BindNode(t, filepath.Join(tmp, "not-a-disk"), filepath.Join(dir, "ctr", "file"))

	src := mustStatic(t, StaticConfig{Patterns: []string{bound.Path, onTmpfs.Path, free.Path}})
	disks, problems := discover(t, src)
	if len(problems) != 0 || len(disks) != 3 {
		t.Fatalf("disks %+v, problems %v", disks, problems)
	}
	b, o, f := disks[filepath.Base(bound.Path)], disks[filepath.Base(onTmpfs.Path)], disks[filepath.Base(free.Path)]
	if !b.Facts.Mounted || !reflect.DeepEqual(b.Facts.DeviceNodeBinds, []string{staging, publish}) {
		t.Errorf("bound device: Mounted %v, DeviceNodeBinds %q; want true, [%s %s]", b.Facts.Mounted, b.Facts.DeviceNodeBinds, staging, publish)
	}
	if !o.Facts.Mounted || !reflect.DeepEqual(o.Facts.DeviceNodeBinds, []string{ctr}) {
		t.Errorf("device bound from a tmpfs node: Mounted %v, DeviceNodeBinds %q; want true, [%s]", o.Facts.Mounted, o.Facts.DeviceNodeBinds, ctr)
	}
	if f.Facts.Mounted || f.Facts.DeviceNodeBinds != nil {
		t.Errorf("unbound device: %+v", f.Facts)
	}
	for _, d := range []Disk{b, o, f} {
		if len(d.Facts.Signatures) != 0 || d.Facts.Partitioned || d.Facts.Holders != nil {
			t.Errorf("%s is blank and whole: %+v", d.Name, d.Facts)
		}
	}

	for _, p := range []string{publish, staging, ctr, plain} {
		unmount(t, p)
	}
	disks, _ = discover(t, src)
	for _, d := range disks {
		if d.Facts.Mounted || d.Facts.DeviceNodeBinds != nil {
			t.Errorf("%s after its binds are gone: %+v", d.Name, d.Facts)
		}
	}
}

// TestStaticPartitionNodeBindIsInUse: a bind of a partition's node puts
// the whole disk in use, and the partition's own mount point is listed.
func TestStaticPartitionNodeBindIsInUse(t *testing.T) {
	l := testutil.NewLoop(t, "", 32<<20)
	sfdisk := exec.Command("sfdisk", "-q", "--no-reread", "--no-tell-kernel", l.Path)
	sfdisk.Stdin = strings.NewReader("label: gpt\n,8M\n,\n")
	if out, err := sfdisk.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	run(t, "partx", "-a", l.Path)
	t.Cleanup(func() { _ = exec.Command("partx", "-d", l.Path).Run() })
	part := l.Path + "p2"
	waitFor(t, part)
	target := testutil.BindNode(t, part, filepath.Join(t.TempDir(), "raw"))

	disks, _ := discover(t, mustStatic(t, StaticConfig{Patterns: []string{l.Path}}))
	d := disks[filepath.Base(l.Path)]
	if !d.Facts.Mounted || !reflect.DeepEqual(d.Facts.DeviceNodeBinds, []string{target}) {
		t.Errorf("disk with a bound partition node: Mounted %v, DeviceNodeBinds %q; want true, [%s]", d.Facts.Mounted, d.Facts.DeviceNodeBinds, target)
	}
}

// TestStaticHeldDevice: a blank whole device under device-mapper is
// reported with its holder, and the dm device itself as device-mapper.
func TestStaticHeldDevice(t *testing.T) {
	l := testutil.NewLoop(t, "", 16<<20)
	holder := testutil.DMLinear(t, l.Path)
	src := mustStatic(t, StaticConfig{Patterns: []string{l.Path, "/dev/" + holder}})
	disks, _ := discover(t, src)
	if d := disks[filepath.Base(l.Path)]; !reflect.DeepEqual(d.Facts.Holders, []string{holder}) || d.Facts.Mounted {
		t.Errorf("held loop device: %+v, want holders [%s]", d.Facts, holder)
	}
	if d, ok := disks[holder]; ok && !d.Facts.DeviceMapper {
		t.Errorf("%s: %+v, want DeviceMapper", holder, d.Facts)
	}
}

// TestReadMountTableNodeMounts: only devtmpfs and tmpfs mounts of
// something below their root can be device-node binds; their mount points
// come back unescaped.
func TestReadMountTableNodeMounts(t *testing.T) {
	f := newFakeSys(t)
	f.mountInfo(
		"22 1 254:1 / / rw - ext4 /dev/vda1 rw",
		"23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=4k",
		"24 22 0:25 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/token rw - tmpfs tmpfs rw",
		`30 22 0:5 /vdc /var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv\0401/pod rw shared:9 - devtmpfs devtmpfs rw`,
		"31 22 0:26 /disk /run/ctr/xvda rw master:4 - tmpfs tmpfs rw",
		"32 22 254:1 /srv/node /mnt/node rw - ext4 /dev/vda1 rw",
		"33 22 0:5 /vdd /tab\\011and\\134slash rw - devtmpfs devtmpfs rw",
		"34 22 0:27 /x",
		"35 22 0:21 / /proc rw - proc proc rw",
	)
	table, err := readMountTable(f.mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pv 1/pod", "/run/ctr/xvda", "/tab\tand\\slash"}
	if !reflect.DeepEqual(table.nodeMounts, want) {
		t.Errorf("nodeMounts = %q, want %q", table.nodeMounts, want)
	}
	for in, out := range map[string]string{`a\040b`: "a b", `a\04`: `a\04`, `a\999b`: `a\999b`, `\134`: `\`, `plain`: "plain"} {
		if got := unescapeMountField(in); got != out {
			t.Errorf("unescapeMountField(%q) = %q, want %q", in, got, out)
		}
	}
}

// TestDeviceNodeBinds: of the mount points, only block device nodes count,
// by their device number; links are not followed, missing paths skipped.
func TestDeviceNodeBinds(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	mknod(t, p("blk"), "254:32", unix.S_IFBLK)
	mknod(t, p("blk2"), "254:32", unix.S_IFBLK)
	mknod(t, p("part"), "254:33", unix.S_IFBLK)
	mknod(t, p("chr"), "254:48", unix.S_IFCHR)
	if err := os.WriteFile(p("file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(p("part"), p("link")); err != nil {
		t.Fatal(err)
	}
	got := deviceNodeBinds([]string{p("blk"), p("chr"), p("file"), dir, p("missing"), p("link"), p("part"), p("blk2")})
	want := map[string][]string{"254:32": {p("blk"), p("blk2")}, "254:33": {p("part")}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("deviceNodeBinds = %v, want %v", got, want)
	}
}
