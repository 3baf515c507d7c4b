package disk

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// sysfs reads block-device facts from a sysfs tree (normally /sys) and a
// device tree (normally /dev). Everything here works from kernel names and
// "MAJ:MIN" strings, never from device nodes, so tests point both roots at
// fake trees.
type sysfs struct {
	root, dev string
}

// readTrim returns the trimmed content of a sysfs attribute, "" when it is
// missing or unreadable.
func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func listDir(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// devName turns a kernel name into its path below /dev: the kernel writes
// "/" as "!" in names such as cciss!c0d0.
func devName(name string) string { return strings.ReplaceAll(name, "!", "/") }

// kernelNameOf turns a path below /dev back into a kernel name.
func kernelNameOf(rel string) string { return strings.ReplaceAll(rel, "/", "!") }

// block is a path below /sys/block/<name>.
func (s sysfs) block(name string, parts ...string) string {
	return filepath.Join(append([]string{s.root, "block", name}, parts...)...)
}

// devPath is where the device node of a kernel name lives.
func (s sysfs) devPath(name string) string { return filepath.Join(s.dev, devName(name)) }

// nameOf maps a device number "MAJ:MIN" to its kernel name and, for a
// partition, the name of the whole disk it belongs to.
func (s sysfs) nameOf(majMin string) (name, parent string, err error) {
	target, err := filepath.EvalSymlinks(filepath.Join(s.root, "dev", "block", majMin))
	if err != nil {
		return "", "", fmt.Errorf("device %s unknown to sysfs: %w", majMin, err)
	}
	name, parent = splitDevDir(target)
	return name, parent, nil
}

// splitDevDir names the device whose sysfs directory is dir, and its parent
// disk when it is a partition (a partition directory sits inside the disk's
// and holds a "partition" file).
func splitDevDir(dir string) (name, parent string) {
	name = filepath.Base(dir)
	if exists(filepath.Join(dir, "partition")) {
		return name, filepath.Base(filepath.Dir(dir))
	}
	return name, ""
}

// resolve is nameOf with a fallback for a kernel without /sys/dev/block or a
// device missing there: hint, a kernel name guessed from the device path, is
// accepted when its sysfs "dev" attribute is majMin.
func (s sysfs) resolve(majMin, hint string) (name, parent string, err error) {
	name, parent, err = s.nameOf(majMin)
	if err == nil || hint == "" {
		return name, parent, err
	}
	dir, evalErr := filepath.EvalSymlinks(filepath.Join(s.root, "class", "block", hint))
	if evalErr != nil || readTrim(filepath.Join(dir, "dev")) != majMin {
		return "", "", err
	}
	name, parent = splitDevDir(dir)
	return name, parent, nil
}

// identity returns the most stable identity the kernel offers for a disk:
// serial, then WWN, then a /dev/disk/by-id link, then a loop backing file.
// kind is "" when there is none.
func (s sysfs) identity(name string) (kind, value string) {
	for _, p := range []string{s.block(name, "serial"), s.block(name, "device", "serial")} {
		if v := readTrim(p); v != "" {
			return "serial", v
		}
	}
	for _, p := range []string{s.block(name, "wwid"), s.block(name, "device", "wwid")} {
		if v := readTrim(p); v != "" {
			return "wwn", v
		}
	}
	if link := s.byID(name); link != "" {
		return "byid", link
	}
	if v := readTrim(s.block(name, "loop", "backing_file")); v != "" {
		return "loop", v
	}
	return "", ""
}

// byID finds a /dev/disk/by-id link that points at the device, preferring
// links that do not name a stacked device (dm-*, lvm-*). Links are compared
// by the base name of their target, so trees whose links are relative
// ("../../vdb") or absolute ("/dev/vdb") both work.
func (s sysfs) byID(name string) string {
	dir := filepath.Join(s.dev, "disk", "by-id")
	want := filepath.Base(devName(name))
	fallback := ""
	for _, n := range listDir(dir) {
		target, err := os.Readlink(filepath.Join(dir, n))
		if err != nil || filepath.Base(target) != want {
			continue
		}
		if !strings.HasPrefix(n, "dm-") && !strings.HasPrefix(n, "lvm-") {
			return n
		}
		if fallback == "" {
			fallback = n
		}
	}
	return fallback
}

// blockInfo is what sysfs says about one whole disk.
type blockInfo struct {
	majMin     string
	sizeBytes  int64
	rotational bool
	readOnly   bool
	dm         bool
	partitions []string // MAJ:MIN of each partition
	holders    []string // of the disk, then of its partitions
}

// info reads size, flags, partitions and holders of the whole disk name.
func (s sysfs) info(name string) (blockInfo, error) {
	bi := blockInfo{majMin: readTrim(s.block(name, "dev"))}
	if bi.majMin == "" {
		return bi, fmt.Errorf("%s: no such block device in %s", name, s.root)
	}
	sectors, err := strconv.ParseInt(readTrim(s.block(name, "size")), 10, 64)
	if err != nil {
		return bi, fmt.Errorf("%s: reading size: %w", name, err)
	}
	bi.sizeBytes = sectors * 512 // sysfs counts 512-byte sectors whatever the block size
	bi.rotational = readTrim(s.block(name, "queue", "rotational")) == "1"
	bi.readOnly = readTrim(s.block(name, "ro")) == "1"
	bi.dm = strings.HasPrefix(name, "dm-") || exists(s.block(name, "dm"))
	bi.holders = listDir(s.block(name, "holders"))
	for _, part := range s.partitions(name) {
		bi.partitions = append(bi.partitions, readTrim(s.block(name, part, "dev")))
		bi.holders = append(bi.holders, listDir(s.block(name, part, "holders"))...)
	}
	return bi, nil
}

// partitions lists the kernel names of the partitions of disk name.
func (s sysfs) partitions(name string) []string {
	var out []string
	for _, e := range listDir(s.block(name)) {
		if exists(s.block(name, e, "partition")) {
			out = append(out, e)
		}
	}
	return out
}

// mountTable is the set of mounted device numbers, the filesystems the
// system runs from, and the mounts that may be device-node binds.
type mountTable struct {
	mounted map[string]bool
	system  []mountRef
	// nodeMounts are the mount points of devtmpfs and tmpfs mounts of
	// something below the filesystem's root: the only mounts that can be a
	// bind of a device node (a whole devtmpfs or tmpfs is a directory).
	nodeMounts []string
}

// mountRef is one mounted filesystem: its device number and mount source.
type mountRef struct {
	majMin, source string
}

// systemMounts are the mount points whose disks hold the running system.
var systemMounts = map[string]bool{"/": true, "/boot": true, "/boot/efi": true, "/usr": true}

// nodeFS are the filesystems device nodes live on. A bind mount of a node
// shows its source filesystem's type and device number, not the disk's.
var nodeFS = map[string]bool{"devtmpfs": true, "tmpfs": true}

// readMountTable parses a mountinfo file (proc(5)): field 3 is MAJ:MIN,
// field 4 the root of the mount within its filesystem, field 5 the mount
// point, and the filesystem type and mount source follow the " - "
// separator.
func readMountTable(path string) (mountTable, error) {
	t := mountTable{mounted: map[string]bool{}}
	f, err := os.Open(path)
	if err != nil {
		return t, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		t.mounted[fields[2]] = true
		if systemMounts[fields[4]] {
			t.system = append(t.system, mountRef{majMin: fields[2], source: mountSource(fields)})
		}
		if nodeFS[mountFSType(fields)] && fields[3] != "/" {
			t.nodeMounts = append(t.nodeMounts, unescapeMountField(fields[4]))
		}
	}
	return t, sc.Err()
}

// mountSource returns the source field of a split mountinfo line, "" when
// the line is malformed.
func mountSource(fields []string) string {
	for i, f := range fields {
		if f == "-" && i+2 < len(fields) {
			return fields[i+2]
		}
	}
	return ""
}

// mountFSType returns the filesystem type of a split mountinfo line, ""
// when the line is malformed.
func mountFSType(fields []string) string {
	for i, f := range fields {
		if f == "-" && i+1 < len(fields) {
			return fields[i+1]
		}
	}
	return ""
}

// unescapeMountField undoes the octal escapes (\040 for a space, \011,
// \012, \134) the kernel writes in mountinfo paths.
func unescapeMountField(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// deviceNodeBinds maps the device number ("MAJ:MIN") of every block device
// node that is the root of one of mountPoints to those mount points. It
// only stats the mount points themselves (never following a final link,
// never opening anything), and skips one that is gone or not a block
// device.
func deviceNodeBinds(mountPoints []string) map[string][]string {
	out := map[string][]string{}
	for _, mp := range mountPoints {
		var st unix.Stat_t
		if err := unix.Lstat(mp, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
			continue
		}
		mm := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		out[mm] = append(out[mm], mp)
	}
	return out
}

// systemDisks names the devices behind the system's filesystems, with their
// parent disks, following device-mapper and md stacks down through their
// slaves. A filesystem on an anonymous device number (btrfs, for one) is
// found by the name of its mount source instead.
func (s sysfs) systemDisks(t mountTable) map[string]bool {
	out := map[string]bool{}
	for _, m := range t.system {
		name, parent, err := s.nameOf(m.majMin)
		if err != nil || strings.HasPrefix(m.majMin, "0:") {
			name, parent = s.sourceName(m.source)
		}
		if name == "" {
			continue
		}
		if parent != "" {
			s.visitSlaves(parent, 0, out)
		}
		s.visitSlaves(name, 0, out)
	}
	return out
}

// sourceName maps a mount source such as /dev/vda2 or /dev/mapper/vg-root
// to the kernel name of the device and its parent disk, or "" when sysfs
// does not know it.
func (s sysfs) sourceName(source string) (name, parent string) {
	rel, ok := strings.CutPrefix(source, "/dev/")
	if !ok {
		return "", ""
	}
	// /dev/mapper/vg-root and the like are links to the kernel's node.
	if p, err := filepath.EvalSymlinks(filepath.Join(s.dev, rel)); err == nil {
		if r, err := filepath.Rel(s.dev, p); err == nil && !strings.HasPrefix(r, "..") {
			rel = r
		}
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(s.root, "class", "block", kernelNameOf(rel)))
	if err != nil {
		return "", ""
	}
	return splitDevDir(dir)
}

// visitSlaves marks name and, recursively, the devices it is stacked on
// (and their parent disks) in out.
func (s sysfs) visitSlaves(name string, depth int, out map[string]bool) {
	if depth > 8 || out[name] {
		return
	}
	out[name] = true
	for _, slave := range listDir(filepath.Join(s.root, "class", "block", name, "slaves")) {
		if _, parent, err := s.nameOf(readTrim(filepath.Join(s.root, "class", "block", slave, "dev"))); err == nil && parent != "" {
			s.visitSlaves(parent, depth+1, out)
		}
		s.visitSlaves(slave, depth+1, out)
	}
}
