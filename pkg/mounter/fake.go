package mounter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
)

// Operation names of Fake, used by SetError, FailNext, SetDelay and the
// Before hook.
const (
	OpProbe     = "probe"
	OpFormat    = "format"
	OpMount     = "mount"
	OpBind      = "bind"
	OpUnmount   = "unmount"
	OpWipe      = "wipe"
	OpSetRO     = "setro"
	OpMountInfo = "mountinfo"
	OpStats     = "stats"
	OpSize      = "size"
	OpNumber    = "number"
)

// Fake is an in-memory Interface for unit tests of the node and controller
// logic. Devices are registered with AddDevice; mounts are kept as mountinfo
// entries carrying the device's major:minor, mount options and ro/rw, so
// callers see them through MountInfo exactly as they see real ones. Every
// state-changing operation is recorded in Calls. Errors can be injected per
// operation for good (SetError) or once (FailNext), and an operation can be
// slowed (SetDelay) or held (Before). It behaves like Real where the driver
// relies on it: Format refuses a device with a signature, Wipe refuses a
// mounted device and clears the read-only flag. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	devices map[string]*FakeDevice
	mounts  []mount.MountInfo
	bound   map[string]string // device-node bind target -> device path
	errs    map[string]error
	next    map[string][]error
	delays  map[string]time.Duration
	calls   []string
	nextID  int
	seq     int // devices added so far

	// Stats is what FSStats returns for any path. Set it before use.
	Stats FSStats
	// Before, when set, runs at the start of every state-changing operation
	// and of Probe, outside the lock, with the operation's name (OpFormat,
	// ...) and its main argument (the device, or the target for mount, bind
	// and unmount): a test can block or slow one. Set it before the fake is
	// used concurrently, or use SetBefore.
	Before func(op, arg string)
}

// FakeDevice is one fake block device.
type FakeDevice struct {
	// Size is the device size in bytes.
	Size int64
	// Rdev is the device number, as in st_rdev.
	Rdev uint64
	// Probe is what Probe reports: signatures, filesystem type and UUID.
	Probe disk.Probe
	// FSSize is the size given to the last Format (the device size when the
	// format had no limit); 0 when the device was not formatted by the fake.
	FSSize int64
	// ReadOnly is the kernel read-only flag (SetDeviceReadOnly).
	ReadOnly bool
	// Held stands for a holder or another exclusive opener (device-mapper,
	// md, another program): CheckUnclaimed and Wipe fail while it is set.
	Held bool
	// Content stands for the data on the device: a test sets it with
	// SetContent. Format keeps it (mkfs rewrites metadata only), Wipe with
	// CleanupSignatures keeps it, the other policies erase it.
	Content string
	// Writes counts the changes to the device's content or signatures.
	Writes int
	// Partitions are the kernel's partitions of the device (SetPartitions);
	// Wipe clears them, as the kernel's re-read of the wiped table does.
	Partitions []string
	seq        int // AddDevice's count when it added the device
}

// NewFake returns a fake without devices or mounts.
func NewFake() *Fake {
	return &Fake{
		devices: map[string]*FakeDevice{}, bound: map[string]string{},
		errs: map[string]error{}, next: map[string][]error{}, delays: map[string]time.Duration{},
	}
}

var _ Interface = (*Fake)(nil)

// AddDevice registers a blank device at path with size bytes and the device
// number major:minor, replacing any device at that path.
func (f *Fake) AddDevice(path string, size int64, major, minor uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	f.devices[path] = &FakeDevice{Size: size, Rdev: unix.Mkdev(major, minor), seq: f.seq}
}

// RemoveDevice makes the device at path disappear, as an unplugged disk.
func (f *Fake) RemoveDevice(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.devices, path)
}

// SetSignatures makes the device at path look as if it carried p. It panics
// for a path AddDevice has not registered.
func (f *Fake) SetSignatures(path string, p disk.Probe) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.mustDevice(path)
	d.Probe = p
	d.Writes++
}

// Scribble makes the device at path look as if it carried p without
// moving its write counter: data still in a writer's page cache, or sent
// around the block layer. It panics for a path AddDevice has not
// registered.
func (f *Fake) Scribble(path string, p disk.Probe) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mustDevice(path).Probe = p
}

// SetPartitions makes the kernel seem to have partitions of the device at
// path. It panics for a path AddDevice has not registered.
func (f *Fake) SetPartitions(path string, parts ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mustDevice(path).Partitions = parts
}

// Partitions returns the device's partitions (SetPartitions).
func (f *Fake) Partitions(device string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[device]
	if !ok {
		return nil, &os.PathError{Op: "stat", Path: device, Err: os.ErrNotExist}
	}
	return append([]string(nil), d.Partitions...), nil
}

// SetHeld makes the device at path look claimed by a holder (true) or
// released (false). It panics for a path AddDevice has not registered.
func (f *Fake) SetHeld(path string, held bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mustDevice(path).Held = held
}

// CheckUnclaimed fails with EBUSY while a filesystem of the device is
// mounted or the device is held, like an exclusive open of a real device.
func (f *Fake) CheckUnclaimed(device string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[device]
	if !ok {
		return &os.PathError{Op: "open", Path: device, Err: os.ErrNotExist}
	}
	return f.claimedLocked(device, d)
}

func (f *Fake) claimedLocked(device string, d *FakeDevice) error {
	if d.Held {
		return fmt.Errorf("%s is in use (held): %w", device, syscall.EBUSY)
	}
	for _, m := range f.mounts {
		if uint32(m.Major) == unix.Major(d.Rdev) && uint32(m.Minor) == unix.Minor(d.Rdev) {
			return fmt.Errorf("%s is in use (mounted at %s): %w", device, m.MountPoint, syscall.EBUSY)
		}
	}
	return nil
}

// SetContent sets the data marker of the device at path. It panics for a
// path AddDevice has not registered.
func (f *Fake) SetContent(path, content string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.mustDevice(path)
	d.Content = content
	d.Writes++
}

// Counters returns the device's media (its number and the sequence number
// AddDevice gave it) and its write counter: every change the fake makes to
// a device's content or signatures (SetSignatures, SetContent, Format,
// Wipe) moves it.
func (f *Fake) Counters(device string) (DeviceCounters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[device]
	if !ok {
		return DeviceCounters{}, &os.PathError{Op: "stat", Path: device, Err: os.ErrNotExist}
	}
	return DeviceCounters{
		Media:  fmt.Sprintf("%d seq=%d", d.Rdev, d.seq),
		Writes: fmt.Sprintf("w=%d", d.Writes),
	}, nil
}

func (f *Fake) mustDevice(path string) *FakeDevice {
	d, ok := f.devices[path]
	if !ok {
		panic("mounter.Fake: no device " + path)
	}
	return d
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

// SetError makes every later call of op fail with err; nil clears it.
func (f *Fake) SetError(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.errs, op)
	} else {
		f.errs[op] = err
	}
}

// FailNext makes the next call of op fail with err, once. Several calls
// queue up; a FailNext error is used before one set with SetError.
func (f *Fake) FailNext(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next[op] = append(f.next[op], err)
}

// SetDelay makes every later call of op wait d before it does anything (a
// slow mkfs, say); an operation with a context stops waiting when it is done
// and returns its error. 0 clears the delay.
func (f *Fake) SetDelay(op string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d <= 0 {
		delete(f.delays, op)
	} else {
		f.delays[op] = d
	}
}

// SetBefore sets the Before hook under the fake's lock.
func (f *Fake) SetBefore(fn func(op, arg string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Before = fn
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

// Calls lists the operations done so far, oldest first, e.g.
// "probe /dev/x", "format /dev/x ext4 [-L a]" (with " size=N" for a limited
// format), "mount /dev/x /t ext4 [noatime]", "bind /s /t ro=true",
// "unmount /t", "wipe /dev/x zero", "setro /dev/x true". Queries (MountInfo,
// FSStats, DeviceSize, DeviceNumber) are not recorded.
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// injected returns the error injected for op, consuming a FailNext one. The
// caller holds the lock.
func (f *Fake) injected(op string) error {
	if q := f.next[op]; len(q) > 0 {
		f.next[op] = q[1:]
		return q[0]
	}
	return f.errs[op]
}

// begin runs the hook and the delay outside the lock, then takes the lock,
// records the call and returns the injected error for op, if any. The
// caller must unlock, also on error.
func (f *Fake) begin(ctx context.Context, op, arg, call string) error {
	f.mu.Lock()
	before, delay := f.Before, f.delays[op]
	f.mu.Unlock()
	if before != nil {
		before(op, arg)
	}
	var cerr error
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			cerr = ctx.Err()
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, call)
	if cerr != nil {
		return cerr
	}
	return f.injected(op)
}

// Probe returns the device's fake signatures.
func (f *Fake) Probe(ctx context.Context, device string) (disk.Probe, error) {
	err := f.begin(ctx, OpProbe, device, "probe "+device)
	defer f.mu.Unlock()
	if err != nil {
		return disk.Probe{}, err
	}
	d, ok := f.devices[device]
	if !ok {
		return disk.Probe{}, fmt.Errorf("probe: %w", &os.PathError{Op: "stat", Path: device, Err: os.ErrNotExist})
	}
	p := d.Probe
	p.Signatures = append([]string(nil), p.Signatures...)
	return p, nil
}

// Format gives a blank device a filesystem of fsType with uuid. It checks
// the arguments as Real does (ErrUnsupportedFS, ErrInvalidMkfsArgs) and
// fails with ErrNotBlank on a device with a signature.
func (f *Fake) Format(ctx context.Context, device, fsType, uuid string, sizeBytes int64, extraArgs []string) error {
	call := fmt.Sprintf("format %s %s %v", device, fsType, extraArgs)
	if sizeBytes > 0 {
		call += fmt.Sprintf(" size=%d", sizeBytes)
	}
	err := f.begin(ctx, OpFormat, device, call)
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	if _, err := mkfsArgs(fsType, uuid, sizeBytes, extraArgs); err != nil {
		return err
	}
	d, ok := f.devices[device]
	if !ok {
		return fmt.Errorf("format: %w", &os.PathError{Op: "open", Path: device, Err: os.ErrNotExist})
	}
	if len(d.Probe.Signatures) > 0 {
		return fmt.Errorf("%w: %s carries %v", ErrNotBlank, device, d.Probe.Signatures)
	}
	if d.ReadOnly {
		return fmt.Errorf("format %s: %w", device, syscall.EROFS)
	}
	d.Probe = disk.Probe{FSType: fsType, UUID: uuid, Signatures: []string{fsType}}
	d.Writes++
	d.FSSize = d.Size
	if sizeBytes > 0 && sizeBytes < d.Size {
		d.FSSize = sizeBytes
	}
	return nil
}

func (f *Fake) addMount(m mount.MountInfo) {
	f.nextID++
	m.ID = f.nextID
	m.MountPoint = filepath.Clean(m.MountPoint)
	f.mounts = append(f.mounts, m)
}

// Mount records a mount of device at target. It fails for an unknown device
// or when fsType is not the device's filesystem. The entry's MountOptions
// start with "ro" or "rw" (ro when options hold "ro"), then options.
func (f *Fake) Mount(device, target, fsType string, options []string) error {
	err := f.begin(context.Background(), OpMount, target, fmt.Sprintf("mount %s %s %s %v", device, target, fsType, options))
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	d, ok := f.devices[device]
	if !ok {
		return fmt.Errorf("mount: %w", &os.PathError{Op: "open", Path: device, Err: os.ErrNotExist})
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

// BindMount records a bind mount of a device node (an entry on devtmpfs,
// through which DeviceSize and DeviceNumber of target then see the device)
// or of a mount point (a copy of its topmost entry at target). Its
// MountOptions are ["ro"] or ["rw"].
func (f *Fake) BindMount(source, target string, readOnly bool) error {
	err := f.begin(context.Background(), OpBind, target, fmt.Sprintf("bind %s %s ro=%v", source, target, readOnly))
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

// Unmount removes the topmost mount at target; it fails when there is none.
func (f *Fake) Unmount(target string) error {
	err := f.begin(context.Background(), OpUnmount, target, "unmount "+target)
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	target = filepath.Clean(target)
	for i := len(f.mounts) - 1; i >= 0; i-- {
		if f.mounts[i].MountPoint == target {
			f.mounts = append(f.mounts[:i], f.mounts[i+1:]...)
			if !f.mountedAtLocked(target) {
				delete(f.bound, target)
			}
			return nil
		}
	}
	return fmt.Errorf("unmount %s: not mounted", target)
}

func (f *Fake) mountedAtLocked(target string) bool {
	for _, m := range f.mounts {
		if m.MountPoint == target {
			return true
		}
	}
	return false
}

// MountInfo returns a copy of the fake mount table, oldest mount first.
func (f *Fake) MountInfo() ([]mount.MountInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected(OpMountInfo); err != nil {
		return nil, err
	}
	out := make([]mount.MountInfo, len(f.mounts))
	for i, m := range f.mounts {
		m.MountOptions = append([]string(nil), m.MountOptions...)
		m.SuperOptions = append([]string(nil), m.SuperOptions...)
		out[i] = m
	}
	return out, nil
}

// Wipe cleans the device: it fails with ErrUnknownPolicy for an unknown
// policy and with EBUSY while a filesystem of the device is mounted, clears
// the read-only flag and the signatures, and erases Content unless policy
// is CleanupSignatures. For CleanupZero and CleanupShred it reports a
// checkpoint at the end of each pass, from o.Resume when that fits the
// device as Real's would; the call recorded says where it resumed.
func (f *Fake) Wipe(ctx context.Context, device string, policy CleanupPolicy, o WipeOptions) error {
	call := fmt.Sprintf("wipe %s %s", device, policy)
	if o.Resume.Done() > 0 {
		call += fmt.Sprintf(" from pass %d byte %d", o.Resume.Pass, o.Resume.DoneBytes)
	}
	points, err := f.wipe(ctx, device, policy, o, call)
	if err != nil {
		return err
	}
	for _, p := range points {
		if o.Checkpoint != nil {
			if err := o.Checkpoint(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// wipe is Wipe under the lock; it returns the checkpoints to report.
func (f *Fake) wipe(ctx context.Context, device string, policy CleanupPolicy, o WipeOptions, call string) ([]WipeProgress, error) {
	err := f.begin(ctx, OpWipe, device, call)
	defer f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	switch policy {
	case CleanupSignatures, CleanupDiscard, CleanupZero, CleanupShred:
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnknownPolicy, policy)
	}
	d, ok := f.devices[device]
	if !ok {
		return nil, fmt.Errorf("wipe: %w", &os.PathError{Op: "open", Path: device, Err: os.ErrNotExist})
	}
	if err := f.claimedLocked(device, d); err != nil {
		return nil, err
	}
	d.ReadOnly = false
	d.Probe = disk.Probe{}
	d.Partitions = nil
	d.Writes++
	d.FSSize = 0
	if policy != CleanupSignatures {
		d.Content = ""
	}
	if policy != CleanupZero && policy != CleanupShred {
		return nil, nil
	}
	p := WipeProgress{Passes: Passes(policy), LengthBytes: d.Size - o.KeepTailBytes}
	if q := o.Resume; q.Passes == p.Passes && q.LengthBytes == p.LengthBytes && q.Pass >= 0 && q.Pass < q.Passes {
		p.Pass = q.Pass
	}
	var points []WipeProgress
	for ; p.Pass < p.Passes; p.Pass++ {
		points = append(points, WipeProgress{Pass: p.Pass, Passes: p.Passes, DoneBytes: p.LengthBytes, LengthBytes: p.LengthBytes})
	}
	return points, nil
}

// FSStats returns Stats, or the error injected for OpStats.
func (f *Fake) FSStats(string) (FSStats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected(OpStats); err != nil {
		return FSStats{}, err
	}
	return f.Stats, nil
}

// DeviceSize returns the size of the device at path or of the device
// bind-mounted onto path.
func (f *Fake) DeviceSize(path string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected(OpSize); err != nil {
		return 0, err
	}
	d, err := f.deviceAtLocked(path)
	if err != nil {
		return 0, err
	}
	return d.Size, nil
}

// DeviceNumber returns the device number of the device at path or of the
// device bind-mounted onto path; ErrNotBlockDevice for an existing path
// that is neither, an os.ErrNotExist error for a missing one.
func (f *Fake) DeviceNumber(path string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected(OpNumber); err != nil {
		return 0, err
	}
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
		if d, ok := f.devices[dev]; ok {
			return d, nil
		}
		return nil, &os.PathError{Op: "stat", Path: path, Err: os.ErrNotExist}
	}
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: %s", ErrNotBlockDevice, path)
}

// SetDeviceReadOnly records the device's read-only flag.
func (f *Fake) SetDeviceReadOnly(device string, readOnly bool) error {
	err := f.begin(context.Background(), OpSetRO, device, fmt.Sprintf("setro %s %v", device, readOnly))
	defer f.mu.Unlock()
	if err != nil {
		return err
	}
	d, ok := f.devices[device]
	if !ok {
		return fmt.Errorf("setro: %w", &os.PathError{Op: "open", Path: device, Err: os.ErrNotExist})
	}
	d.ReadOnly = readOnly
	return nil
}
