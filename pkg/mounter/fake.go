package mounter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
)

// Fake is an in-memory Interface for unit tests. Devices are registered with
// AddDevice; mounts are kept as mountinfo entries, so callers see them through
// MountInfo exactly as they would see real ones. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	devices map[string]*FakeDevice
	mounts  []mount.MountInfo
	bound   map[string]string // block target -> device path
	errs    map[string]error
	calls   []string
	nextID  int

	// Stats is what FSStats returns for any mounted path.
	Stats FSStats
	// Before, when set, runs at the start of every operation, outside the
	// lock, with the operation's name ("format", "mount", "bind", "unmount",
	// "wipe", "probe") and its main argument: a test can block or slow one.
	Before func(op, arg string)
}

// FakeDevice is one fake block device.
type FakeDevice struct {
	Size     int64
	Rdev     uint64
	Probe    disk.Probe
	ReadOnly bool
}

// NewFake returns an empty fake.
func NewFake() *Fake {
	return &Fake{devices: map[string]*FakeDevice{}, bound: map[string]string{}, errs: map[string]error{}}
}

var _ Interface = (*Fake)(nil)

// AddDevice registers a blank device at path with a device number.
func (f *Fake) AddDevice(path string, size int64, major, minor uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices[path] = &FakeDevice{Size: size, Rdev: unix.Mkdev(major, minor)}
}

// SetSignatures makes a device look as if it carried these signatures.
func (f *Fake) SetSignatures(path string, p disk.Probe) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices[path].Probe = p
}

// Device returns a copy of the fake device at path.
func (f *Fake) Device(path string) (FakeDevice, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[path]
	if !ok {
		return FakeDevice{}, false
	}
	return *d, true
}

// SetError makes every later call of op fail with err (nil clears it).
func (f *Fake) SetError(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.errs, op)
	} else {
		f.errs[op] = err
	}
}

// SetSuperReadOnly marks the filesystem mounted at path read-only at the
// superblock, as the kernel does after filesystem errors.
func (f *Fake) SetSuperReadOnly(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.mounts {
		if f.mounts[i].MountPoint == filepath.Clean(path) {
			f.mounts[i].SuperOptions = []string{"ro"}
		}
	}
}

// Calls lists the operations done so far, e.g. "format /dev/x ext4".
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// begin runs the hook, then takes the lock, records the call and returns the
// injected error for op, if any. The caller must unlock.
func (f *Fake) begin(op, arg, call string) error {
	if f.Before != nil {
		f.Before(op, arg)
	}
	f.mu.Lock()
	f.calls = append(f.calls, call)
	return f.errs[op]
}

// Probe returns the device's fake signatures.
func (f *Fake) Probe(_ context.Context, device string) (disk.Probe, error) {
	err := f.begin("probe", device, "probe "+device)
	defer f.mu.Unlock()
	if err != nil {
		return disk.Probe{}, err
	}
	d, ok := f.devices[device]
	if !ok {
		return disk.Probe{}, fmt.Errorf("probe %s: %w", device, os.ErrNotExist)
	}
	return d.Probe, nil
}

// Format gives a blank device a filesystem.
func (f *Fake) Format(_ context.Context, device, fsType, uuid string, sizeBytes int64, extraArgs []string) error {
	call := fmt.Sprintf("format %s %s %v", device, fsType, extraArgs)
	if sizeBytes > 0 {
		call += fmt.Sprintf(" size=%d", sizeBytes)
	}
	err := f.begin("format", device, call)
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	if _, err := mkfsArgs(fsType, uuid, sizeBytes, extraArgs); err != nil {
		return err
	}
	d, ok := f.devices[device]
	if !ok {
		return fmt.Errorf("format %s: %w", device, os.ErrNotExist)
	}
	if len(d.Probe.Signatures) > 0 {
		return fmt.Errorf("%w: %s", ErrNotBlank, device)
	}
	d.Probe = disk.Probe{FSType: fsType, UUID: uuid, Signatures: []string{fsType}}
	return nil
}

func (f *Fake) addMount(m mount.MountInfo) {
	f.nextID++
	m.ID = f.nextID
	m.MountPoint = filepath.Clean(m.MountPoint)
	f.mounts = append(f.mounts, m)
}

// Mount records a filesystem mount of device at target.
func (f *Fake) Mount(device, target, fsType string, options []string) error {
	err := f.begin("mount", target, fmt.Sprintf("mount %s %s %s %v", device, target, fsType, options))
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	d, ok := f.devices[device]
	if !ok {
		return fmt.Errorf("mount %s: %w", device, os.ErrNotExist)
	}
	if d.Probe.FSType != fsType {
		return fmt.Errorf("mount %s: wrong fs type %q, device has %q", device, fsType, d.Probe.FSType)
	}
	mode := "rw"
	if contains(options, "ro") {
		mode = "ro"
	}
	f.addMount(mount.MountInfo{Major: int(unix.Major(d.Rdev)), Minor: int(unix.Minor(d.Rdev)), Root: "/",
		Source: device, MountPoint: target, FsType: fsType,
		MountOptions: append([]string{mode}, options...), SuperOptions: []string{"rw"}})
	return nil
}

// BindMount records a bind mount of a mounted directory or a device node.
func (f *Fake) BindMount(source, target string, readOnly bool) error {
	err := f.begin("bind", target, fmt.Sprintf("bind %s %s ro=%v", source, target, readOnly))
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	mode := "rw"
	if readOnly {
		mode = "ro"
	}
	if _, ok := f.devices[source]; ok {
		f.bound[filepath.Clean(target)] = source
		f.addMount(mount.MountInfo{Major: 0, Minor: 6, Root: "/" + filepath.Base(source), Source: "devtmpfs",
			MountPoint: target, FsType: "devtmpfs", MountOptions: []string{mode}, SuperOptions: []string{"rw"}})
		return nil
	}
	for i := len(f.mounts) - 1; i >= 0; i-- {
		if m := f.mounts[i]; m.MountPoint == filepath.Clean(source) {
			m.MountPoint, m.MountOptions = target, []string{mode}
			f.addMount(m)
			return nil
		}
	}
	return fmt.Errorf("bind %s: source is neither a device nor a mount point", source)
}

// Unmount removes the topmost mount at target.
func (f *Fake) Unmount(target string) error {
	err := f.begin("unmount", target, "unmount "+target)
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	target = filepath.Clean(target)
	for i := len(f.mounts) - 1; i >= 0; i-- {
		if f.mounts[i].MountPoint == target {
			f.mounts = append(f.mounts[:i], f.mounts[i+1:]...)
			delete(f.bound, target)
			return nil
		}
	}
	return fmt.Errorf("unmount %s: not mounted", target)
}

// MountInfo lists the fake mounts.
func (f *Fake) MountInfo() ([]mount.MountInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.errs["mountinfo"]; err != nil {
		return nil, err
	}
	return append([]mount.MountInfo(nil), f.mounts...), nil
}

// Wipe clears the device's signatures.
func (f *Fake) Wipe(_ context.Context, device string, policy CleanupPolicy) error {
	err := f.begin("wipe", device, fmt.Sprintf("wipe %s %s", device, policy))
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	switch policy {
	case CleanupSignatures, CleanupDiscard, CleanupZero, CleanupShred:
	default:
		return fmt.Errorf("%w: %q", ErrUnknownPolicy, policy)
	}
	d, ok := f.devices[device]
	if !ok {
		return fmt.Errorf("wipe %s: %w", device, os.ErrNotExist)
	}
	d.Probe = disk.Probe{}
	return nil
}

// FSStats returns Stats.
func (f *Fake) FSStats(string) (FSStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Stats, f.errs["stats"]
}

// DeviceSize returns the size of a device or of the device bound at path.
func (f *Fake) DeviceSize(path string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.deviceAtLocked(path)
	if err != nil {
		return 0, err
	}
	return d.Size, nil
}

// DeviceNumber returns the device number of a device or of the device bound
// at path.
func (f *Fake) DeviceNumber(path string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.deviceAtLocked(path)
	if err != nil {
		return 0, err
	}
	return d.Rdev, nil
}

func (f *Fake) deviceAtLocked(path string) (*FakeDevice, error) {
	if d, ok := f.devices[path]; ok {
		return d, nil
	}
	if dev, ok := f.bound[filepath.Clean(path)]; ok {
		return f.devices[dev], nil
	}
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: %s", ErrNotBlockDevice, path)
}

// SetDeviceReadOnly records the device's read-only flag.
func (f *Fake) SetDeviceReadOnly(device string, readOnly bool) error {
	err := f.begin("setro", device, fmt.Sprintf("setro %s %v", device, readOnly))
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	d, ok := f.devices[device]
	if !ok {
		return fmt.Errorf("setro %s: %w", device, os.ErrNotExist)
	}
	d.ReadOnly = readOnly
	return nil
}
