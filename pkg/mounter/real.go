package mounter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
)

// Sentinel errors of the mounter.
var (
	// ErrNotBlank: Format was asked to format a device that carries a signature.
	ErrNotBlank = errors.New("device is not blank")
	// ErrUnsupportedFS: the filesystem type is not ext4 or xfs.
	ErrUnsupportedFS = errors.New("unsupported filesystem type")
	// ErrUnknownPolicy: the cleanup policy is not one of the four known ones.
	ErrUnknownPolicy = errors.New("unknown cleanup policy")
	// ErrNotBlockDevice: the path is not a block device.
	ErrNotBlockDevice = errors.New("not a block device")
)

// Real runs the system's tools and syscalls.
type Real struct {
	exec          utilexec.Interface
	mounter       *mount.Mounter
	mountInfoPath string
}

// New returns the real mounter.
func New() *Real {
	return &Real{exec: utilexec.New(), mounter: mount.New("").(*mount.Mounter), mountInfoPath: "/proc/self/mountinfo"}
}

var _ Interface = (*Real)(nil)

// maxOutput bounds how much of a tool's output goes into an error.
const maxOutput = 2048

// run executes a tool with an argument vector and empty stdin; a failure
// carries the tool's output.
func (r *Real) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := r.exec.CommandContext(ctx, name, args...)
	cmd.SetStdin(strings.NewReader(""))
	out, err := cmd.CombinedOutput()
	if err != nil {
		o := strings.TrimSpace(string(out))
		if len(o) > maxOutput {
			o = o[:maxOutput] + "..."
		}
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, o)
	}
	return out, nil
}

func exitCode(err error) int {
	var ee utilexec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus()
	}
	return -1
}

// Probe reports every signature on device: blkid's low-level probe for the
// filesystem, plus wipefs's list of all signatures it would erase (partition
// tables, RAID and LVM members, backup superblocks).
func (r *Real) Probe(ctx context.Context, device string) (disk.Probe, error) {
	var p disk.Probe
	// blkid and wipefs both report a device they cannot open as blank (exit
	// code 2, and 0 with no output): read it ourselves first.
	if err := readable(device); err != nil {
		return p, err
	}
	out, err := r.exec.CommandContext(ctx, "blkid", "-p", "-o", "export", device).CombinedOutput()
	switch code := exitCode(err); {
	case err == nil:
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), "=")
			switch k {
			case "TYPE":
				p.FSType = v
			case "UUID":
				p.UUID = v
			}
		}
	case code == 2: // nothing found
	case code == 8: // ambivalent: more than one signature
		p.Signatures = append(p.Signatures, "ambivalent")
	default:
		return p, fmt.Errorf("blkid -p %s: %v: %s", device, err, strings.TrimSpace(string(out)))
	}
	out, err = r.run(ctx, "wipefs", "--no-act", "--noheadings", "--output", "TYPE", device)
	if err != nil {
		return p, err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" && !contains(p.Signatures, l) {
			p.Signatures = append(p.Signatures, l)
		}
	}
	if p.FSType != "" && !contains(p.Signatures, p.FSType) {
		p.Signatures = append([]string{p.FSType}, p.Signatures...)
	}
	return p, nil
}

// readable opens the device and reads its first block.
func readable(device string) error {
	f, err := os.Open(device)
	if err != nil {
		return fmt.Errorf("probe %s: %w", device, err)
	}
	defer f.Close()
	if _, err := f.Read(make([]byte, 4096)); err != nil {
		return fmt.Errorf("probe %s: reading: %w", device, err)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ext4Defaults keep mkfs.ext4 from doing work proportional to the disk size.
const ext4Defaults = "nodiscard,lazy_itable_init=1,lazy_journal_init=1"

// Format creates a filesystem on a blank device. mke2fs gets no -F: should a
// signature appear after the probe, it asks for confirmation, reads the empty
// stdin, and gives up.
func (r *Real) Format(ctx context.Context, device, fsType, uuid string, sizeBytes int64, extraArgs []string) error {
	args, err := mkfsArgs(fsType, uuid, sizeBytes, extraArgs)
	if err != nil {
		return err
	}
	p, err := r.Probe(ctx, device)
	if err != nil {
		return err
	}
	if len(p.Signatures) > 0 {
		return fmt.Errorf("%w: %s carries %s", ErrNotBlank, device, strings.Join(p.Signatures, ","))
	}
	start := time.Now()
	args = append(args, device)
	if fsType == "ext4" && sizeBytes > 0 {
		args = append(args, fmt.Sprintf("%dk", sizeBytes/1024)) // mke2fs: fs-size after the device
	}
	if _, err := r.run(ctx, "mkfs."+fsType, args...); err != nil {
		return err
	}
	klog.InfoS("Formatted", "device", device, "fsType", fsType, "args", args, "duration", time.Since(start))
	return nil
}

// mkfsArgs builds the mkfs arguments before the device: the driver's
// defaults, then the user's, with the user's -E (ext4) or -m (xfs) merged
// after the defaults so that its keys win. An xfs size limit is merged into
// -d the same way (ext4 takes it after the device).
func mkfsArgs(fsType, uuid string, sizeBytes int64, extra []string) ([]string, error) {
	var flag, defaults string
	var args []string
	switch fsType {
	case "ext4":
		flag, defaults = "-E", ext4Defaults
		args = []string{"-q", "-U", uuid}
	case "xfs":
		flag, defaults = "-m", "uuid="+uuid
		args = []string{"-q", "-K"}
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedFS, fsType)
	}
	merged := false
	var rest []string
	for i := 0; i < len(extra); i++ {
		a := extra[i]
		switch {
		case a == flag && i+1 < len(extra):
			rest = append(rest, flag, defaults+","+extra[i+1])
			i++
			merged = true
		case strings.HasPrefix(a, flag) && len(a) > len(flag):
			rest = append(rest, flag, defaults+","+a[len(flag):])
			merged = true
		default:
			rest = append(rest, a)
		}
	}
	if !merged {
		args = append(args, flag, defaults)
	}
	args = append(args, rest...)
	if fsType == "xfs" && sizeBytes > 0 {
		args = mergeOption(args, "-d", fmt.Sprintf("size=%d", sizeBytes/4096*4096))
	}
	return args, nil
}

// mergeOption adds sub-option sub to the last flag option in args (as
// "flag a,b,sub"), or appends "flag sub".
func mergeOption(args []string, flag, sub string) []string {
	for i := len(args) - 1; i >= 0; i-- {
		switch {
		case args[i] == flag && i+1 < len(args):
			args[i+1] += "," + sub
			return args
		case strings.HasPrefix(args[i], flag) && len(args[i]) > len(flag):
			args[i] += "," + sub
			return args
		}
	}
	return append(args, flag, sub)
}

// Mount mounts device at target.
func (r *Real) Mount(device, target, fsType string, options []string) error {
	if err := r.mounter.MountSensitiveWithoutSystemd(device, target, fsType, options, nil); err != nil {
		return err
	}
	klog.InfoS("Mounted", "device", device, "targetPath", target, "fsType", fsType, "options", options)
	return nil
}

// BindMount bind-mounts source onto target, then remounts it read-only when
// asked (mount-utils does both steps for "bind","ro").
func (r *Real) BindMount(source, target string, readOnly bool) error {
	opts := []string{"bind"}
	if readOnly {
		opts = append(opts, "ro")
	}
	if err := r.mounter.MountSensitiveWithoutSystemd(source, target, "", opts, nil); err != nil {
		return err
	}
	klog.InfoS("Bind mounted", "device", source, "targetPath", target, "readOnly", readOnly)
	return nil
}

// Unmount unmounts target once.
func (r *Real) Unmount(target string) error {
	if err := r.mounter.Unmount(target); err != nil {
		return err
	}
	klog.InfoS("Unmounted", "targetPath", target)
	return nil
}

// MountInfo parses the mount table of this mount namespace.
func (r *Real) MountInfo() ([]mount.MountInfo, error) {
	return mount.ParseMountInfo(r.mountInfoPath)
}

// FSStats measures the filesystem mounted at path.
func (r *Real) FSStats(path string) (FSStats, error) {
	var s unix.Statfs_t
	if err := unix.Statfs(path, &s); err != nil {
		return FSStats{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := int64(s.Bsize)
	return FSStats{
		TotalBytes:     int64(s.Blocks) * bs,
		UsedBytes:      int64(s.Blocks-s.Bfree) * bs,
		AvailableBytes: int64(s.Bavail) * bs,
		TotalInodes:    int64(s.Files),
		UsedInodes:     int64(s.Files - s.Ffree),
		FreeInodes:     int64(s.Ffree),
	}, nil
}

// DeviceSize returns the size of the block device at path.
func (r *Real) DeviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// Seeking to the end of a block device yields its size.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", path, err)
	}
	return size, nil
}

// DeviceNumber returns st_rdev of the block device node at path.
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

// SetDeviceReadOnly flips the device's read-only flag with blockdev.
func (r *Real) SetDeviceReadOnly(device string, readOnly bool) error {
	flag := "--setrw"
	if readOnly {
		flag = "--setro"
	}
	_, err := r.run(context.Background(), "blockdev", flag, device)
	return err
}
