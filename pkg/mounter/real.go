package mounter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
)

// Sentinel errors of the mounter; match them with errors.Is.
var (
	// ErrNotBlank is returned by Format when the device carries a signature.
	ErrNotBlank = errors.New("device is not blank")
	// ErrUnsupportedFS is returned for a filesystem type other than ext4 or xfs.
	ErrUnsupportedFS = errors.New("unsupported filesystem type")
	// ErrInvalidMkfsArgs is returned when extra mkfs arguments cannot be
	// merged with the driver's defaults (an option without its value).
	ErrInvalidMkfsArgs = errors.New("invalid mkfs arguments")
	// ErrUnknownPolicy is returned by Wipe for a policy that is not one of the
	// four CleanupPolicy constants.
	ErrUnknownPolicy = errors.New("unknown cleanup policy")
	// ErrNotBlockDevice is returned when a path is not a block device node
	// and has none bind-mounted onto it.
	ErrNotBlockDevice = errors.New("not a block device")
	// ErrNotClean is returned by Wipe when a signature survives the cleanup.
	ErrNotClean = errors.New("device still carries a signature after cleanup")
)

// DefaultMountInfoPath is the mount table MountInfo reads unless Options says
// otherwise.
const DefaultMountInfoPath = "/proc/self/mountinfo"

// maxOutput bounds how many bytes of a tool's output go into an error.
const maxOutput = 1024

// Options configure a Real mounter. The zero value selects the system.
type Options struct {
	// Exec runs every external tool (blkid, wipefs, mkfs.ext4, mkfs.xfs,
	// blkdiscard, blockdev, umount); nil means k8s.io/utils/exec.New().
	Exec utilexec.Interface
	// Mounter performs Mount and BindMount; nil means mount.New("").
	Mounter mount.Interface
	// MountInfoPath is the mountinfo file MountInfo parses; "" means
	// DefaultMountInfoPath.
	MountInfoPath string
}

// Real is the Interface on the host. It runs the system's tools, each as an
// argument vector with an empty stdin and never through a shell, and uses
// syscalls for sizes, device numbers, statistics and the read-only flag. It
// holds no state of its own and is safe for concurrent use.
type Real struct {
	exec          utilexec.Interface
	mounter       mount.Interface
	mountInfoPath string
	// zeroOut zeroes a range of a block device (blkZeroOut; tests replace
	// it to reach the fallback of written zeroes).
	zeroOut func(f *os.File, off, n int64) error
}

var _ Interface = (*Real)(nil)

// New returns the real mounter with the system defaults.
func New() *Real { return NewWithOptions(Options{}) }

// NewWithOptions returns a real mounter that uses what o sets and the system
// defaults for the rest.
func NewWithOptions(o Options) *Real {
	r := &Real{exec: o.Exec, mounter: o.Mounter, mountInfoPath: o.MountInfoPath, zeroOut: blkZeroOut}
	if r.exec == nil {
		r.exec = utilexec.New()
	}
	if r.mounter == nil {
		r.mounter = mount.New("")
	}
	if r.mountInfoPath == "" {
		r.mountInfoPath = DefaultMountInfoPath
	}
	return r
}

// ToolError is the failure of an external tool. Its message holds the
// command line, the error (exit status) and the tool's trimmed output
// (stderr, then stdout), bounded to about 1 KiB.
type ToolError struct {
	// Argv is the command line that failed.
	Argv []string
	// ExitCode is the tool's exit status, -1 when it did not run to an exit
	// (not found, killed, cancelled).
	ExitCode int
	// Output is the tool's trimmed, bounded stderr and stdout.
	Output string
	// Err is the underlying error. A cancelled or expired context is wrapped
	// so that errors.Is(err, context.Canceled) holds.
	Err error
}

// Error says which command failed, how, and what it printed.
func (e *ToolError) Error() string {
	s := strings.Join(e.Argv, " ") + ": " + e.Err.Error()
	if e.Output != "" {
		s += ": " + e.Output
	}
	return s
}

// Unwrap returns the underlying error.
func (e *ToolError) Unwrap() error { return e.Err }

// boundOutput trims a tool's output and cuts it to maxOutput bytes without
// splitting a character.
func boundOutput(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > maxOutput {
		cut := maxOutput
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "...(truncated)"
	}
	return strings.ToValidUTF8(s, "?")
}

// run runs name with args and an empty stdin and returns its stdout. On
// failure the error is a *ToolError, whose ExitCode tells a tool's verdicts
// apart (blkid: 2 nothing found, 8 ambivalent).
func (r *Real) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := r.exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.SetStdin(bytes.NewReader(nil))
	cmd.SetStdout(&stdout)
	cmd.SetStderr(&stderr)
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	code := -1
	var ee utilexec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		code = ee.ExitStatus()
	}
	if cerr := ctx.Err(); cerr != nil {
		err = fmt.Errorf("%w (%v)", cerr, err)
	}
	out := bytes.TrimSpace(stderr.Bytes())
	if o := bytes.TrimSpace(stdout.Bytes()); len(o) > 0 {
		if len(out) > 0 {
			out = append(append(out, '\n'), o...)
		} else {
			out = o
		}
	}
	return stdout.Bytes(), &ToolError{
		Argv: append([]string{name}, args...), ExitCode: code, Output: boundOutput(out), Err: err,
	}
}

// exitCode is the exit status carried by a *ToolError, -1 for any other
// error.
func exitCode(err error) int {
	var te *ToolError
	if errors.As(err, &te) {
		return te.ExitCode
	}
	return -1
}

// Probe reports every signature on device without changing it: the
// filesystem (TYPE, UUID) or partition table (PTTYPE) found by blkid's
// low-level probe ("blkid -p -o export"), plus every signature wipefs would
// erase ("wipefs --no-act"): several filesystems, a partition table with its
// protective MBR, RAID and LVM members. Nothing found by either means blank:
// an empty Probe and a nil error. blkid's exit status 8 (more than one
// filesystem, "ambivalent") adds the signature "ambivalent" and leaves
// FSType empty. FSType and UUID are set only for a filesystem (blkid
// USAGE=filesystem), so an LVM or RAID member is a signature but no FSType.
// A device that cannot be opened and read (blkid and wipefs would call it
// blank) or any other failure is an error.
//
// The two programs run at once, and the device stays open from before
// they start until both end: the kernel drops a block device's page cache
// when its last opener closes it, so that each program would otherwise
// read the signature areas from the disk again, one after the other.
func (r *Real) Probe(ctx context.Context, device string) (disk.Probe, error) {
	var p disk.Probe
	// blkid and wipefs both report a device they cannot open as blank (exit
	// status 2, and 0 with no output): open and read it first.
	f, err := openReadable(device)
	if err != nil {
		return p, err
	}
	defer f.Close()
	var (
		wg   sync.WaitGroup
		wOut []byte
		wErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		wOut, wErr = r.run(ctx, "wipefs", "--no-act", "--noheadings", "--output", "TYPE", device)
	}()
	out, err := r.run(ctx, "blkid", "-p", "-o", "export", device)
	wg.Wait()
	switch code := exitCode(err); {
	case err == nil:
		var typ, usage, ptType, uuid string
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), "=")
			switch k {
			case "TYPE":
				typ = v
			case "USAGE":
				usage = v
			case "UUID":
				uuid = v
			case "PTTYPE":
				ptType = v
			}
		}
		if typ != "" {
			p.Signatures = append(p.Signatures, typ)
			if usage == "" || usage == "filesystem" {
				p.FSType, p.UUID = typ, uuid
			}
		}
		if ptType != "" {
			p.Signatures = appendNew(p.Signatures, ptType)
		}
	case code == 2: // nothing found
	case code == 8: // ambivalent: more than one filesystem
		p.Signatures = append(p.Signatures, "ambivalent")
	default:
		return disk.Probe{}, err
	}
	if wErr != nil {
		return disk.Probe{}, wErr
	}
	for _, l := range strings.Split(string(wOut), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			p.Signatures = appendNew(p.Signatures, l)
		}
	}
	return p, nil
}

// openReadable opens the device and reads its first block; the caller
// closes it.
func openReadable(device string) (*os.File, error) {
	f, err := os.Open(device)
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", device, err)
	}
	if _, err := f.Read(make([]byte, 4096)); err != nil {
		f.Close()
		return nil, fmt.Errorf("probe %s: reading: %w", device, err)
	}
	return f, nil
}

func appendNew(list []string, s string) []string {
	if contains(list, s) {
		return list
	}
	return append(list, s)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Format probes device and, when it is blank, creates an fsType filesystem
// with the given UUID:
//
//	mkfs.ext4 -q -U <uuid> -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 <extraArgs...> <device> [<sizeBytes/1024>k]
//	mkfs.xfs -q -K -m uuid=<uuid> <extraArgs...> [-d size=<sizeBytes>] <device>
//
// with a user -E (ext4) or -m (xfs) merged after the defaults so that the
// user's keys win (see mkfsArgs). A device with any signature fails with
// ErrNotBlank before mkfs runs; an fsType other than ext4 or xfs fails with
// ErrUnsupportedFS; a failing mkfs with a *ToolError carrying its output.
//
// Neither -F nor -f is ever passed: mkfs.xfs then refuses a device that
// gained a signature after the probe, and both refuse a mounted device.
// mke2fs, however, asks before overwriting a filesystem only when stdin and
// stdout are terminals, so for ext4 the probe is the only check (stdin is
// empty all the same).
//
// With sizeBytes > 0 the filesystem ends there, and the device's bytes past
// sizeBytes (up to its last 4 MiB) are as they were when Format returns:
// mkfs.xfs zeroes the last 128 KiB of a device whatever its size option, so
// Format saves them and writes them back after mkfs (a crash in between
// loses them).
func (r *Real) Format(ctx context.Context, device, fsType, uuid string, sizeBytes int64, extraArgs []string) error {
	argv, err := mkfsArgv(fsType, uuid, device, sizeBytes, extraArgs)
	if err != nil {
		return err
	}
	p, err := r.Probe(ctx, device)
	if err != nil {
		return err
	}
	if len(p.Signatures) > 0 {
		klog.InfoS("Refusing to format a device that is not blank", "device", device, "signatures", p.Signatures)
		return fmt.Errorf("%w: %s carries %s", ErrNotBlank, device, strings.Join(p.Signatures, ","))
	}
	if sizeBytes <= 0 {
		return r.mkfs(ctx, device, fsType, argv)
	}
	restore, err := keepTail(device, sizeBytes)
	if err != nil {
		return err
	}
	err = r.mkfs(ctx, device, fsType, argv)
	if rerr := restore(); rerr != nil {
		klog.ErrorS(rerr, "Restoring the device's tail after mkfs failed", "device", device)
		return errors.Join(err, rerr)
	}
	return err
}

// mkfs runs mkfs.<fsType> with argv (which names the device) without
// probing first.
func (r *Real) mkfs(ctx context.Context, device, fsType string, argv []string) error {
	start := time.Now()
	klog.InfoS("Formatting", "device", device, "fsType", fsType, "args", argv)
	if _, err := r.run(ctx, "mkfs."+fsType, argv...); err != nil {
		klog.ErrorS(err, "Format failed", "device", device, "fsType", fsType, "duration", time.Since(start))
		return err
	}
	klog.InfoS("Formatted", "device", device, "fsType", fsType, "duration", time.Since(start))
	return nil
}

// Mount mounts device at target ("mount -t fsType -o options device target",
// through k8s.io/mount-utils, without systemd). target must exist.
func (r *Real) Mount(device, target, fsType string, options []string) error {
	if err := r.mounter.MountSensitiveWithoutSystemd(device, target, fsType, options, nil); err != nil {
		klog.ErrorS(err, "Mount failed", "device", device, "targetPath", target, "fsType", fsType, "options", options)
		return err
	}
	klog.InfoS("Mounted", "device", device, "targetPath", target, "fsType", fsType, "options", options)
	return nil
}

// BindMount bind-mounts source (a directory, or a device node) onto target
// (a directory, or a regular file for a device node). With readOnly the bind
// is then remounted read-only, keeping the source mount's nosuid, nodev and
// noexec flags (mount-utils does both steps). Should the read-only remount
// fail, the writable bind is unmounted again before the error is returned:
// a failed read-only BindMount leaves no writable mount behind.
func (r *Real) BindMount(source, target string, readOnly bool) error {
	opts := []string{"bind"}
	before := -1
	if readOnly {
		opts = append(opts, "ro")
		if n, err := r.mountsAt(target); err == nil {
			before = n
		}
	}
	if err := r.mounter.MountSensitiveWithoutSystemd(source, target, "", opts, nil); err != nil {
		if before >= 0 {
			if n, merr := r.mountsAt(target); merr == nil && n > before {
				uerr := r.unmount(context.Background(), target)
				klog.ErrorS(err, "Read-only remount of a bind mount failed; removing the writable bind", "source", source, "targetPath", target, "unmountError", uerr)
				if uerr != nil {
					return fmt.Errorf("%w; removing the writable bind: %v", err, uerr)
				}
				return err
			}
		}
		klog.ErrorS(err, "Bind mount failed", "source", source, "targetPath", target, "readOnly", readOnly)
		return err
	}
	klog.InfoS("Bind mounted", "source", source, "targetPath", target, "readOnly", readOnly)
	return nil
}

// mountsAt counts the mounts whose mount point is target.
func (r *Real) mountsAt(target string) (int, error) {
	infos, err := r.MountInfo()
	if err != nil {
		return 0, err
	}
	if p, err := filepath.EvalSymlinks(target); err == nil {
		target = p
	}
	if p, err := filepath.Abs(target); err == nil {
		target = p
	}
	n := 0
	for _, mi := range infos {
		if mi.MountPoint == target {
			n++
		}
	}
	return n, nil
}

// Unmount runs "umount target" once: it removes the topmost mount at target
// and fails when target is not a mount point.
func (r *Real) Unmount(target string) error {
	if err := r.unmount(context.Background(), target); err != nil {
		klog.ErrorS(err, "Unmount failed", "targetPath", target)
		return err
	}
	klog.InfoS("Unmounted", "targetPath", target)
	return nil
}

func (r *Real) unmount(ctx context.Context, target string) error {
	_, err := r.run(ctx, "umount", target)
	return err
}

// MountInfo parses the configured mountinfo file (by default the mount table
// of this process's mount namespace).
func (r *Real) MountInfo() ([]mount.MountInfo, error) {
	return mount.ParseMountInfo(r.mountInfoPath)
}

// FSStats measures the filesystem mounted at path with statfs: bytes in
// fragment-size units, available bytes as an unprivileged user may use them
// (f_bavail, without the blocks reserved for root), and inodes.
func (r *Real) FSStats(path string) (FSStats, error) {
	var s unix.Statfs_t
	if err := unix.Statfs(path, &s); err != nil {
		return FSStats{}, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	bs := s.Frsize
	if bs == 0 {
		bs = s.Bsize
	}
	return FSStats{
		TotalBytes:     int64(s.Blocks) * bs,
		UsedBytes:      int64(s.Blocks-s.Bfree) * bs,
		AvailableBytes: int64(s.Bavail) * bs,
		TotalInodes:    int64(s.Files),
		UsedInodes:     int64(s.Files - s.Ffree),
		FreeInodes:     int64(s.Ffree),
	}, nil
}

// openBlock opens path read-only and checks that it is a block device.
func openBlock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		f.Close()
		return nil, fmt.Errorf("%w: %s", ErrNotBlockDevice, path)
	}
	return f, nil
}

// DeviceSize returns the size in bytes of the block device at path (a device
// node, or a file a device node is bind-mounted onto) from the BLKGETSIZE64
// ioctl. A path that is not a block device fails with ErrNotBlockDevice.
func (r *Real) DeviceSize(path string) (int64, error) {
	f, err := openBlock(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, &os.PathError{Op: "ioctl BLKGETSIZE64", Path: path, Err: errno}
	}
	return int64(size), nil
}

// DeviceNumber returns st_rdev of the block device node at path, or of the
// device node bind-mounted onto path. A path that is not a block device
// fails with ErrNotBlockDevice, a missing one with an error matching
// os.ErrNotExist.
func (r *Real) DeviceNumber(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, fmt.Errorf("%w: %s", ErrNotBlockDevice, path)
	}
	return st.Rdev, nil
}

// Counters reads the device's sysfs directory (/sys/dev/block/MAJ:MIN):
// diskseq for Media, and for Writes the I/O counters of stat
// (Documentation/block/stat.rst: writes completed, sectors written,
// discards and sectors discarded). A whole disk's counters
// include its partitions', and I/O that a stacked device (device-mapper,
// md, loop) sends down reaches them too.
func (r *Real) Counters(device string) (DeviceCounters, error) {
	var c DeviceCounters
	n, err := r.DeviceNumber(device)
	if err != nil {
		return c, err
	}
	num := fmt.Sprintf("%d:%d", unix.Major(n), unix.Minor(n))
	// GetCapacity reads these for every free disk on every call: the
	// directory is looked up once, the files read without allocations
	// beyond the result.
	dir, err := unix.Open("/sys/dev/block/"+num, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return c, &os.PathError{Op: "open", Path: "/sys/dev/block/" + num, Err: err}
	}
	defer unix.Close(dir)
	var buf [512]byte
	if seq, err := readSysfs(dir, "diskseq", buf[:]); err == nil {
		c.Media = num + " seq=" + seq
	}
	stat, err := readSysfs(dir, "stat", buf[:])
	if err != nil {
		return c, fmt.Errorf("/sys/dev/block/%s/stat: %w", num, err)
	}
	f := strings.Fields(stat)
	if len(f) < 9 {
		return c, fmt.Errorf("/sys/dev/block/%s/stat: %d fields, want at least 9", num, len(f))
	}
	if f[8] != "0" { // I/O in flight
		return c, nil
	}
	// Without I/O accounting the counters never move: queue/iostats off
	// (a common NVMe tuning), or a device that never counted a read
	// although the caller probed it (some kernels keep no counters for
	// an NVMe multipath head).
	if iostats, err := readSysfs(dir, "queue/iostats", buf[:]); err == nil && iostats == "0" {
		return c, nil
	}
	if f[0] == "0" {
		return c, nil
	}
	c.Writes = num + " w=" + f[4] + "/" + f[6]
	if len(f) >= 14 { // discard counters, since Linux 4.18
		c.Writes += " d=" + f[11] + "/" + f[13]
	}
	return c, nil
}

// readSysfs reads the small file name below the directory dir into buf and
// returns it without surrounding space.
func readSysfs(dir int, name string, buf []byte) (string, error) {
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// Partitions lists the entries of the device's sysfs directory
// (/sys/dev/block/MAJ:MIN) that are partitions: those with a partition
// file.
func (r *Real) Partitions(device string) ([]string, error) {
	n, err := r.DeviceNumber(device)
	if err != nil {
		return nil, err
	}
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(n), unix.Minor(n))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// SetDeviceReadOnly sets or clears the kernel's read-only flag of the block
// device at device with "blockdev --setro" or "--setrw" (the BLKROSET
// ioctl). The flag stops writes through every opener of the device, which a
// read-only bind mount of its node does not.
func (r *Real) SetDeviceReadOnly(device string, readOnly bool) error {
	flag := "--setrw"
	if readOnly {
		flag = "--setro"
	}
	ctx := context.Background()
	if _, err := r.run(ctx, "blockdev", flag, device); err != nil {
		klog.ErrorS(err, "Setting the device's read-only flag failed", "device", device, "readOnly", readOnly)
		return err
	}
	klog.InfoS("Device read-only flag set", "device", device, "readOnly", readOnly)
	return nil
}
