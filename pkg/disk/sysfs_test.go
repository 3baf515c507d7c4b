package disk

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// fakeSys builds a fake sysfs tree and /dev tree in a temporary directory,
// laid out the way the kernel does: device directories below
// devices/virtual/block, with block/, class/block/ and dev/block/ links.
type fakeSys struct {
	t         *testing.T
	root      string
	sys, dev  string
	mountinfo string
	majMin    map[string]string // kernel name (disk or partition) -> MAJ:MIN
	diskOf    map[string]string // partition -> its disk
}

func newFakeSys(t *testing.T) *fakeSys {
	root := t.TempDir()
	f := &fakeSys{t: t, root: root, sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev"),
		majMin: map[string]string{}, diskOf: map[string]string{}}
	for _, d := range []string{"sys/block", "sys/class/block", "sys/dev/block", "dev/disk/by-id"} {
		f.mkdir(filepath.Join(root, d))
	}
	return f
}

func (f *fakeSys) mkdir(p string) {
	f.t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeSys) symlink(target, link string) {
	f.t.Helper()
	f.mkdir(filepath.Dir(link))
	if err := os.Symlink(target, link); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeSys) writeFile(p, v string) {
	f.t.Helper()
	f.mkdir(filepath.Dir(p))
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// write writes a sysfs attribute (path relative to the sysfs root) with the
// trailing newline the kernel adds.
func (f *fakeSys) write(p, v string) { f.writeFile(filepath.Join(f.sys, p), v+"\n") }

// devDir is the sysfs directory of a disk or partition, relative to the root.
func (f *fakeSys) devDir(name string) string {
	if parent := f.diskOf[name]; parent != "" {
		return "devices/virtual/block/" + parent + "/" + name
	}
	return "devices/virtual/block/" + name
}

// disk adds a whole disk.
func (f *fakeSys) disk(name, majMin, sectors, rotational string) {
	f.majMin[name] = majMin
	dir := f.devDir(name)
	f.write(dir+"/dev", majMin)
	f.write(dir+"/size", sectors)
	f.write(dir+"/queue/rotational", rotational)
	f.write(dir+"/ro", "0")
	f.mkdir(filepath.Join(f.sys, dir, "holders"))
	f.symlink(filepath.Join(f.sys, dir), filepath.Join(f.sys, "block", name))
	f.symlink(filepath.Join(f.sys, dir), filepath.Join(f.sys, "class/block", name))
	f.symlink(filepath.Join(f.sys, dir), filepath.Join(f.sys, "dev/block", majMin))
}

// part adds a partition of disk parent (partitions are not in /sys/block).
func (f *fakeSys) part(parent, name, majMin string) {
	f.majMin[name], f.diskOf[name] = majMin, parent
	dir := f.devDir(name)
	f.write(dir+"/dev", majMin)
	f.write(dir+"/partition", "1")
	f.mkdir(filepath.Join(f.sys, dir, "holders"))
	f.symlink(filepath.Join(f.sys, dir), filepath.Join(f.sys, "dev/block", majMin))
	f.symlink(filepath.Join(f.sys, dir), filepath.Join(f.sys, "class/block", name))
}

// stack makes holder (a dm or md device) sit on slave.
func (f *fakeSys) stack(holder, slave string) {
	f.mkdir(filepath.Join(f.sys, f.devDir(slave), "holders", holder))
	f.mkdir(filepath.Join(f.sys, f.devDir(holder), "slaves", slave))
}

func (f *fakeSys) byID(link, target string) {
	f.symlink(target, filepath.Join(f.dev, "disk/by-id", link))
}

func (f *fakeSys) mountInfo(lines ...string) {
	f.mountinfo = filepath.Join(f.root, "mountinfo")
	f.writeFile(f.mountinfo, strings.Join(lines, "\n")+"\n")
}

func (f *fakeSys) fs() sysfs { return sysfs{root: f.sys, dev: f.dev} }

// standardTree is a node with:
//   - vda: system disk, partition vda1 mounted at /, rotational, no identity
//   - vdb: virtio serial, 1 GiB ssd, mounted (a subdirectory, at a path with a space)
//   - nvme0n1: NVMe controller serial (padded) and a namespace wwid
//   - sda: SCSI WWN, rotational, read-only
//   - vdc: serial, partition vdc1 mounted at /data and held by dm-0
//   - dm-0: device mapper on vdc1, named by a dm-name by-id link only
//   - vdd: identity from a by-id link only (a dm-uuid link to it sorts first)
//   - vde: serial with unsafe characters, held directly by md0
//   - vdf: serial, partition vdf1 mounted at /boot
//   - loop0: loop device backed by /var/lib/disk0.img
//   - loop1: a loop device with nothing attached
func standardTree(t *testing.T) *fakeSys {
	f := newFakeSys(t)
	f.disk("vda", "254:0", "83886080", "1")
	f.part("vda", "vda1", "254:1")
	f.disk("vdb", "254:16", "2097152", "0")
	f.write(f.devDir("vdb")+"/serial", "bp1abcdef")
	f.disk("nvme0n1", "259:0", "4194304", "0")
	f.write(f.devDir("nvme0n1")+"/device/serial", "  bp1nvme01  ")
	f.write(f.devDir("nvme0n1")+"/wwid", "eui.0025388b71b1c0a1")
	f.disk("sda", "8:0", "1024", "1")
	f.write(f.devDir("sda")+"/device/wwid", "naa.5000c500a1b2c3d4")
	f.write(f.devDir("sda")+"/ro", "1")
	f.disk("vdc", "254:32", "2048", "0")
	f.write(f.devDir("vdc")+"/serial", "bp1parted")
	f.part("vdc", "vdc1", "254:33")
	f.disk("dm-0", "253:0", "2000", "0")
	f.write(f.devDir("dm-0")+"/dm/name", "vg-lv")
	f.stack("dm-0", "vdc1")
	f.byID("dm-name-vg-lv", "../../dm-0")
	f.disk("vdd", "254:48", "4096", "0")
	f.byID("dm-uuid-part1-abc", "../../vdd")
	f.byID("virtio-legacy-vdd", "../../vdd")
	f.byID("virtio-legacy-vdd-part1", "../../vdd1")
	f.disk("vde", "254:80", "2048", "0")
	f.write(f.devDir("vde")+"/serial", "bp1 with/odd:chars")
	f.disk("md0", "9:0", "2048", "0")
	f.stack("md0", "vde")
	f.disk("vdf", "254:64", "2048", "0")
	f.write(f.devDir("vdf")+"/serial", "bp1boot")
	f.part("vdf", "vdf1", "254:65")
	f.disk("loop0", "7:0", "65536", "0")
	f.write(f.devDir("loop0")+"/loop/backing_file", "/var/lib/disk0.img")
	f.disk("loop1", "7:1", "0", "0")
	f.mountInfo(
		"22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw",
		"23 22 254:65 / /boot rw,relatime shared:2 - ext4 /dev/vdf1 rw",
		"40 22 254:33 / /data rw - xfs /dev/vdc1 rw",
		"41 22 0:21 / /proc rw - proc proc rw",
		`42 22 254:16 /sub /mnt/with\040space rw master:3 - ext4 /dev/vdb rw`,
	)
	return f
}

func TestSysfsIdentity(t *testing.T) {
	fs := standardTree(t).fs()
	for name, want := range map[string]string{
		"vdb":     "serial:bp1abcdef",
		"nvme0n1": "serial:bp1nvme01", // controller serial, trimmed, before the wwid
		"sda":     "wwn:naa.5000c500a1b2c3d4",
		"vdd":     "byid:virtio-legacy-vdd", // preferred over the dm-uuid link
		"dm-0":    "byid:dm-name-vg-lv",     // a dm link when nothing else names it
		"loop0":   "loop:/var/lib/disk0.img",
		"vda":     "",
		"loop1":   "",
		"nope":    "",
	} {
		kind, value := fs.identity(name)
		got := ""
		if kind != "" {
			got = kind + ":" + value
		}
		if got != want {
			t.Errorf("identity(%s) = %q, want %q", name, got, want)
		}
	}
}

func TestSysfsIdentityByIDAbsoluteLinksAndNoUdev(t *testing.T) {
	f := newFakeSys(t)
	f.disk("vdb", "254:16", "2048", "0")
	f.byID("virtio-abc", "/dev/vdb")
	if kind, value := f.fs().identity("vdb"); kind != "byid" || value != "virtio-abc" {
		t.Errorf("identity = %s:%s", kind, value)
	}
	// No /dev/disk/by-id at all, as on a node without udev.
	if err := os.RemoveAll(filepath.Join(f.dev, "disk")); err != nil {
		t.Fatal(err)
	}
	if kind, value := f.fs().identity("vdb"); kind != "" {
		t.Errorf("identity without by-id = %s:%s", kind, value)
	}
}

func TestMakeID(t *testing.T) {
	if id := MakeID("serial", "bp1abcdef"); id != "serial-bp1abcdef" {
		t.Errorf("MakeID = %s", id)
	}
	id := MakeID("wwn", "naa.5000:c5/00")
	if !strings.HasPrefix(id, "wwn-h") || len(id) > 48 || id != MakeID("wwn", "naa.5000:c5/00") {
		t.Errorf("MakeID of unsafe value = %s", id)
	}
}

func TestSysfsInfo(t *testing.T) {
	fs := standardTree(t).fs()
	for name, want := range map[string]blockInfo{
		"vdb":     {majMin: "254:16", sizeBytes: 1 << 30},
		"vda":     {majMin: "254:0", sizeBytes: 40 << 30, rotational: true, partitions: []string{"254:1"}},
		"sda":     {majMin: "8:0", sizeBytes: 512 << 10, rotational: true, readOnly: true},
		"vdc":     {majMin: "254:32", sizeBytes: 1 << 20, partitions: []string{"254:33"}, holders: []string{"dm-0"}},
		"vde":     {majMin: "254:80", sizeBytes: 1 << 20, holders: []string{"md0"}},
		"dm-0":    {majMin: "253:0", sizeBytes: 2000 * 512, dm: true},
		"loop1":   {majMin: "7:1"},
		"nvme0n1": {majMin: "259:0", sizeBytes: 2 << 30},
	} {
		got, err := fs.info(name)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("info(%s) = %+v, %v\nwant %+v", name, got, err, want)
		}
	}
	if _, err := fs.info("nope"); err == nil {
		t.Error("info of a missing device succeeded")
	}
}

func TestSysfsInfoDMByAttributeAndBadSize(t *testing.T) {
	// A device-mapper device is known by its dm directory, whatever its name.
	f := newFakeSys(t)
	f.disk("mpatha", "253:3", "2048", "0")
	f.write(f.devDir("mpatha")+"/dm/uuid", "mpath-3600")
	if bi, err := f.fs().info("mpatha"); err != nil || !bi.dm {
		t.Errorf("info = %+v, %v", bi, err)
	}
	f.disk("bad", "8:16", "lots", "0")
	if _, err := f.fs().info("bad"); err == nil || !strings.Contains(err.Error(), "size") {
		t.Errorf("info with a bad size: %v", err)
	}
}

func TestSysfsResolve(t *testing.T) {
	f := standardTree(t)
	fs := f.fs()
	for majMin, want := range map[string][2]string{
		"254:16": {"vdb", ""}, "254:33": {"vdc1", "vdc"}, "253:0": {"dm-0", ""},
	} {
		name, parent, err := fs.resolve(majMin, "")
		if err != nil || name != want[0] || parent != want[1] {
			t.Errorf("resolve(%s) = %s %s %v, want %v", majMin, name, parent, err, want)
		}
	}
	// A device missing from /sys/dev/block is found through the name hint,
	// but only when the hint's device number matches.
	f.disk("vdg", "254:96", "2048", "0")
	if err := os.Remove(filepath.Join(f.sys, "dev/block/254:96")); err != nil {
		t.Fatal(err)
	}
	if name, parent, err := fs.resolve("254:96", "vdg"); err != nil || name != "vdg" || parent != "" {
		t.Errorf("resolve by hint = %s %s %v", name, parent, err)
	}
	for _, hint := range []string{"", "vdb", "nope"} {
		if name, _, err := fs.resolve("254:96", hint); err == nil {
			t.Errorf("resolve(254:96, %q) = %s, want an error", hint, name)
		}
	}
}

func TestReadMountTable(t *testing.T) {
	f := standardTree(t)
	table, err := readMountTable(f.mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	var mounted []string
	for mm := range table.mounted {
		mounted = append(mounted, mm)
	}
	sort.Strings(mounted)
	if want := []string{"0:21", "254:1", "254:16", "254:33", "254:65"}; !reflect.DeepEqual(mounted, want) {
		t.Errorf("mounted = %v, want %v", mounted, want)
	}
	want := []mountRef{{"254:1", "/dev/vda1"}, {"254:65", "/dev/vdf1"}}
	if !reflect.DeepEqual(table.system, want) {
		t.Errorf("system mounts = %+v, want %+v", table.system, want)
	}
	if _, err := readMountTable(filepath.Join(f.root, "missing")); err == nil {
		t.Error("reading a missing mountinfo succeeded")
	}
}

func TestSystemDisks(t *testing.T) {
	f := standardTree(t)
	f.symlink("../dm-0", filepath.Join(f.dev, "mapper/vg-lv"))
	f.writeFile(filepath.Join(f.dev, "dm-0"), "") // the node that link points at
	for _, tc := range []struct {
		name  string
		lines []string // nil: the standard tree's mountinfo
		want  []string
	}{
		{"root and boot partitions", nil, []string{"vda", "vda1", "vdf", "vdf1"}},
		{"root on device mapper over a partition", []string{"1 0 253:0 / / rw - ext4 /dev/dm-0 rw"}, []string{"dm-0", "vdc", "vdc1"}},
		{"root on md over a disk", []string{"1 0 9:0 / / rw - ext4 /dev/md0 rw"}, []string{"md0", "vde"}},
		{"btrfs root on an anonymous device", []string{"1 0 0:45 / / rw - btrfs /dev/vdb rw"}, []string{"vdb"}},
		{"root named through /dev/mapper", []string{"1 0 0:46 / / rw - ext4 /dev/mapper/vg-lv rw"}, []string{"dm-0", "vdc", "vdc1"}},
		{"overlay root", []string{"1 0 0:47 / / rw - overlay overlay rw"}, nil},
		{"/usr on a whole disk", []string{"1 0 0:47 / / rw - overlay overlay rw", "2 1 8:0 / /usr ro - ext4 /dev/sda ro"}, []string{"sda"}},
	} {
		if tc.lines != nil {
			f.mountInfo(tc.lines...)
		}
		table, err := readMountTable(f.mountinfo)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for name := range f.fs().systemDisks(table) {
			got = append(got, name)
		}
		sort.Strings(got)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: system devices %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNameConversions(t *testing.T) {
	if got := devName("cciss!c0d0"); got != "cciss/c0d0" {
		t.Errorf("devName = %s", got)
	}
	if got := kernelNameOf("cciss/c0d0"); got != "cciss!c0d0" {
		t.Errorf("kernelNameOf = %s", got)
	}
	if got := (sysfs{root: "/s", dev: "/d"}).devPath("cciss!c0d0"); got != "/d/cciss/c0d0" {
		t.Errorf("devPath = %s", got)
	}
}

// mapProber answers from a map keyed by device path; a missing key is a
// blank device.
type mapProber map[string]probeResult

type probeResult struct {
	Probe
	Err error
}

func (m mapProber) Probe(_ context.Context, dev string) (Probe, error) {
	r := m[dev]
	return r.Probe, r.Err
}

// TestDescribeFakeTree checks every field of the disks built from the fake
// tree, without device nodes.
func TestDescribeFakeTree(t *testing.T) {
	f := standardTree(t)
	probeErr := errors.New("blkid exploded")
	src, err := NewStatic(StaticConfig{
		Patterns: []string{"/given/*"}, SysRoot: f.sys, DevRoot: f.dev, MountInfoPath: f.mountinfo,
		Prober: mapProber{
			"/given/vdc": {Probe: Probe{Signatures: []string{"gpt"}}},
			"/given/vdb": {Probe: Probe{Signatures: []string{"xfs"}, FSType: "xfs", UUID: "1b4e28ba"}},
			"/given/sda": {Err: probeErr},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	table, err := readMountTable(f.mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	ms := mountState{table: table, system: src.fs.systemDisks(table)}
	want := map[string]Disk{
		"vdb": {ID: "serial-bp1abcdef", Identity: "serial:bp1abcdef", SizeBytes: 1 << 30, Media: MediaSSD,
			Facts: Facts{Mounted: true, Signatures: []string{"xfs"}, FSUUID: "1b4e28ba"}},
		"nvme0n1": {ID: "serial-bp1nvme01", Identity: "serial:bp1nvme01", SizeBytes: 2 << 30, Media: MediaSSD},
		"sda": {ID: MakeID("wwn", "naa.5000c500a1b2c3d4"), Identity: "wwn:naa.5000c500a1b2c3d4", SizeBytes: 512 << 10, Media: MediaHDD,
			Facts: Facts{ReadOnly: true, Signatures: []string{"unknown: probe failed"}}},
		"vdc": {ID: "serial-bp1parted", Identity: "serial:bp1parted", SizeBytes: 1 << 20, Media: MediaSSD,
			Facts: Facts{Mounted: true, Partitioned: true, Holders: []string{"dm-0"}, Signatures: []string{"gpt"}}},
		"dm-0": {ID: "byid-dm-name-vg-lv", Identity: "byid:dm-name-vg-lv", SizeBytes: 2000 * 512, Media: MediaSSD,
			Facts: Facts{DeviceMapper: true}},
		"vdd": {ID: "byid-virtio-legacy-vdd", Identity: "byid:virtio-legacy-vdd", SizeBytes: 2 << 20, Media: MediaSSD},
		"vde": {ID: MakeID("serial", "bp1 with/odd:chars"), Identity: "serial:bp1 with/odd:chars", SizeBytes: 1 << 20, Media: MediaSSD,
			Facts: Facts{Holders: []string{"md0"}}},
		"vdf": {ID: "serial-bp1boot", Identity: "serial:bp1boot", SizeBytes: 1 << 20, Media: MediaSSD,
			Facts: Facts{System: true, Mounted: true, Partitioned: true}},
		"loop0": {ID: MakeID("loop", "/var/lib/disk0.img"), Identity: "loop:/var/lib/disk0.img", SizeBytes: 32 << 20, Media: MediaSSD},
	}
	for name, w := range want {
		w.Name, w.Path = name, "/given/"+name // no nodes in the fake /dev: the given path is kept
		got, err := src.describe(context.Background(), name, w.Path, ms)
		if name == "sda" {
			if !errors.Is(err, probeErr) {
				t.Errorf("describe(sda) error = %v, want the probe error", err)
			}
		} else if err != nil {
			t.Errorf("describe(%s): %v", name, err)
		}
		if ok, _ := regexp.MatchString(`^[0-9]+:[0-9]+$`, got.DevNum); !ok {
			t.Errorf("describe(%s): device number %q, want MAJ:MIN", name, got.DevNum)
		}
		w.DevNum = got.DevNum // the fake tree's numbers; checked in form above
		if !reflect.DeepEqual(got, w) {
			t.Errorf("describe(%s) =\n%+v\nwant\n%+v", name, got, w)
		}
	}
	if !strings.HasPrefix(want["vde"].ID, "serial-h") || !strings.HasPrefix(want["loop0"].ID, "loop-h") {
		t.Errorf("unsafe identities must be hashed: %s %s", want["vde"].ID, want["loop0"].ID)
	}
	for _, name := range []string{"vda", "loop1"} {
		d, err := src.describe(context.Background(), name, "/given/"+name, ms)
		if !errors.Is(err, errNoIdentity) || d.ID != "" {
			t.Errorf("describe(%s) = %+v, %v; want no disk and a no-stable-identity error", name, d, err)
		}
	}
}
