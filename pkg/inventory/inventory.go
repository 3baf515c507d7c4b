// Package inventory is the node's allocator: it joins the disks discovered on
// the node with the persisted state record, hands out one whole free disk per
// volume, and cleans disks in the background after their volume is deleted.
// Every change of ownership is persisted before it is reported, and all
// ownership changes are serialised by one short-held mutex; slow device work
// (wiping) runs outside it.
package inventory

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// Config wires an Inventory to its node, devices and storage.
type Config struct {
	// Node is this node's ID, embedded in every volume ID.
	Node string
	// Source discovers the node's disks.
	Source disk.Source
	// Store persists the state record.
	Store *state.Store
	// Mounter wipes devices and lists mounts.
	Mounter mounter.Interface
	// RetryInterval is how long a failed cleanup waits before it is retried.
	RetryInterval time.Duration
	// CleanupCheckpointEvery is how often an overwriting cleanup (zero,
	// shred) records its progress in the state, so that a restart goes on
	// from there; 0 means every 10 seconds.
	CleanupCheckpointEvery time.Duration
	// CleanupBytesPerSecond caps the write rate of an overwriting cleanup
	// and of the zeroing before a raw hand-out, per disk; 0 is no cap.
	CleanupBytesPerSecond int64
	// RequireDisks fails the start of a node that has no disk record yet
	// (its first start) when a device entry names no device or no disk
	// found is usable (all are the system disk, hold data or are in use): a mistyped device list must not give a ready driver without
	// disks. NoDisksHint ends that error, saying what to change. Later
	// starts never fail this way: a disk gone then is a lost disk, and the
	// volumes of the others are still served.
	RequireDisks bool
	NoDisksHint  string
	// Observer, when set, hears of state saves, failed cleanups and
	// changes (for metrics, the LocalDisk mirror and events).
	Observer Observer
	// ProbeMaxAge is how long Capacity counts a free disk on its last
	// blank probe while the device shows no change, before it probes the
	// disk again in the background; 0 means 30 seconds.
	ProbeMaxAge time.Duration
}

// Observer hears what happens to the node's disks. Its methods are called
// with the inventory's lock held: they must return quickly and must not
// call the inventory.
type Observer interface {
	// StateSaved reports a save of the state record and how long it took.
	StateSaved(d time.Duration, err error)
	// CleanupFailed reports a failed cleanup of disk d (retried later).
	CleanupFailed(d state.Disk, err error)
	// Changed says that the record or the devices changed: View differs.
	Changed()
}

// Observers is an Observer that tells each of its members, in order.
type Observers []Observer

func (os Observers) StateSaved(d time.Duration, err error) {
	for _, o := range os {
		o.StateSaved(d, err)
	}
}

func (os Observers) CleanupFailed(d state.Disk, err error) {
	for _, o := range os {
		o.CleanupFailed(d, err)
	}
}

func (os Observers) Changed() {
	for _, o := range os {
		o.Changed()
	}
}

// nopObserver is the Observer of an inventory configured without one.
type nopObserver struct{}

func (nopObserver) StateSaved(time.Duration, error) {}
func (nopObserver) CleanupFailed(state.Disk, error) {}
func (nopObserver) Changed()                        {}

// Filter selects disks by media and cloud category; empty fields match all.
type Filter struct {
	Media    string
	Category string
	// Raw asks for disks that can be handed out as raw block devices: not
	// those whose tail the driver keeps for itself.
	Raw bool
}

func (f Filter) match(d *state.Disk) bool {
	return (f.Media == "" || f.Media == d.Media) && (f.Category == "" || f.Category == d.Category) &&
		(!f.Raw || d.ReservedTailBytes == 0)
}

// Request asks for a volume.
type Request struct {
	// Name is the CreateVolume name; the same name always gets the same disk.
	Name string
	// RequiredBytes and LimitBytes bound the disk size; 0 means unbounded.
	RequiredBytes, LimitBytes int64
	Filter                    Filter
	// Parameters are the validated class parameters, stored with the volume
	// and compared on a retry.
	Parameters map[string]string
	// CleanupPolicy is applied when the volume is deleted.
	CleanupPolicy string
	// PV, ClaimNamespace and ClaimName name the Kubernetes objects the
	// volume is for, if known; recorded for operators.
	PV, ClaimNamespace, ClaimName string
}

// Volume is a volume and the disk it lives on.
type Volume struct {
	state.Volume
	Disk state.Disk
	// Device is the disk as discovered now; empty Path when the disk is missing.
	Device disk.Disk
	// Damaged says why the cloud reports the disk damaged, "" when it does not.
	Damaged string
}

// Excluded is a discovered device the driver will not use, and why.
type Excluded struct {
	Disk   disk.Disk
	Reason string
}

// Inventory is the node's allocator. It is safe for concurrent use.
type Inventory struct {
	cfg Config

	// refreshMu serialises refreshes (discovery, pinning, reconciling).
	refreshMu sync.Mutex

	mu        sync.Mutex
	rec       *state.Record
	devices   map[string]disk.Disk // present devices by disk ID
	excluded  []Excluded
	ready     bool
	startErr  error
	started   chan struct{} // closed when the first Start returns
	startOnce sync.Once
	// lastPath is the device path each managed disk was last found at; it
	// outlives the disk's absence, so that whatever device sits at that
	// path later can be named as the wrong disk.
	lastPath map[string]string
	lastNum  map[string]string // device number ("MAJ:MIN") at lastPath

	// reserved are free disks being checked for a CreateVolume; no other
	// one takes them, and capacity leaves them out.
	reserved map[string]bool
	// allocating are the names with an Allocate running (claimName).
	allocating map[string]chan struct{}
	// checks serialise the device checks of each disk (checkBlank).
	checks map[string]*sync.Mutex
	// verdicts are the last blank probes of free disks (checkFree), and
	// fresh says keepVerdictsFresh runs.
	verdicts map[string]*blankVerdict
	fresh    bool
	// stopped is set by Stop: no background work starts after it.
	stopped bool
	// zeroing are the zeroings before raw hand-outs, by disk ID.
	zeroing map[string]*zeroJob

	ctx     context.Context
	cancel  context.CancelFunc
	cleaner sync.WaitGroup
	active  map[string]bool // disk IDs with a cleaner running
}

// New returns an inventory that is not ready until Start succeeds.
func New(cfg Config) *Inventory {
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = time.Minute
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.CleanupCheckpointEvery == 0 {
		cfg.CleanupCheckpointEvery = 10 * time.Second
	}
	if cfg.ProbeMaxAge == 0 {
		cfg.ProbeMaxAge = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Inventory{cfg: cfg, devices: map[string]disk.Disk{}, lastPath: map[string]string{}, lastNum: map[string]string{}, reserved: map[string]bool{}, allocating: map[string]chan struct{}{}, checks: map[string]*sync.Mutex{}, verdicts: map[string]*blankVerdict{}, zeroing: map[string]*zeroJob{}, ctx: ctx, cancel: cancel, active: map[string]bool{}, started: make(chan struct{})}
}

// Start loads the state record, discovers the devices, reconciles the two,
// persists the result and resumes any cleaning. The inventory is ready only
// when Start returns nil.
func (inv *Inventory) Start(ctx context.Context) error {
	err := inv.start(ctx)
	inv.mu.Lock()
	inv.startErr = err
	inv.ready = err == nil
	if inv.ready && !inv.fresh && !inv.stopped {
		inv.fresh = true
		inv.cleaner.Add(1)
		go inv.keepVerdictsFresh()
	}
	inv.mu.Unlock()
	inv.startOnce.Do(func() { close(inv.started) })
	return err
}

// Refresh discovers the node's disks again and reconciles them with the
// record, as Start does: a disk added since is managed (free once it is
// shown blank), a free disk gone without a trace is forgotten, a managed
// disk gone shows missing. ErrNotReady before Start succeeded.
func (inv *Inventory) Refresh(ctx context.Context) error {
	inv.mu.Lock()
	ready := inv.ready
	inv.mu.Unlock()
	if !ready {
		return ErrNotReady
	}
	return inv.refresh(ctx)
}

// WaitStarted returns when Start has returned, or when ctx ends.
func (inv *Inventory) WaitStarted(ctx context.Context) {
	select {
	case <-inv.started:
	case <-ctx.Done():
	}
}

func (inv *Inventory) start(ctx context.Context) error {
	rec, err := inv.cfg.Store.Load()
	if err != nil {
		return fmt.Errorf("loading node state: %w", err)
	}
	if rec == nil {
		klog.InfoS("No node state yet, starting fresh", "path", inv.cfg.Store.Path(), "node", inv.cfg.Node)
		rec = state.New(inv.cfg.Node)
	}
	if rec.Node != inv.cfg.Node {
		return fmt.Errorf("node state %s belongs to node %q, not %q", inv.cfg.Store.Path(), rec.Node, inv.cfg.Node)
	}
	if inv.cfg.RequireDisks && len(rec.Disks) == 0 {
		if err := inv.requireDisks(ctx); err != nil {
			return err
		}
	}
	inv.mu.Lock()
	inv.rec = rec
	inv.mu.Unlock()
	if err := inv.refresh(ctx); err != nil {
		return err
	}
	if n, ok := inv.cfg.Source.(notifier); ok {
		inv.mu.Lock()
		if !inv.stopped {
			inv.cleaner.Add(1)
			go inv.watch(n)
		}
		inv.mu.Unlock()
	}
	return nil
}

// blankPinner is a source that identifies some disks by what it writes onto
// them (the pins of disks without a serial).
type blankPinner interface {
	PinBlank(ctx context.Context) error
}

// notifier is a source that can say its view changed (the cloud answered
// after being unreachable).
type notifier interface {
	Changed() <-chan struct{}
}

// watch re-discovers whenever the source says its view changed.
func (inv *Inventory) watch(n notifier) {
	defer inv.cleaner.Done()
	for {
		select {
		case <-inv.ctx.Done():
			return
		case <-n.Changed():
			if err := inv.refresh(inv.ctx); err != nil {
				klog.ErrorS(err, "Refreshing the disk inventory")
			}
		}
	}
}

// requireDisks is the first start's check of the device list
// (RequireDisks). It only discovers: nothing is recorded before the list is
// right, so a restart checks again.
func (inv *Inventory) requireDisks(ctx context.Context) error {
	found, problems, err := inv.cfg.Source.Discover(ctx)
	if err != nil {
		return fmt.Errorf("discovering disks: %w", err)
	}
	var missing []error
	for _, p := range problems {
		if errors.Is(p, disk.ErrNoDevice) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("a device entry names no device on the node's first start: %w; %s", errors.Join(missing...), inv.cfg.NoDisksHint)
	}
	// The disks found must include one the driver may use: a list that
	// names only the system disk, or disks with data or in use, is as
	// wrong as one that names nothing.
	why := problems
	for _, d := range found {
		reason := exclusionReason(d)
		if reason == "" {
			return nil
		}
		why = append(why, fmt.Errorf("%s: %s", d.Path, reason))
	}
	if len(why) == 0 {
		why = append(why, errors.New("the source lists no disk"))
	}
	return fmt.Errorf("no usable disk on the node's first start: %w; %s", errors.Join(why...), inv.cfg.NoDisksHint)
}

// refresh discovers the devices, reconciles them with the record, persists
// the result and starts cleaners for disks that need them.
//
// Refreshes run one at a time (refreshMu): a source that writes identities
// onto blank disks (PinBlank) does so here only, and the rediscoveries of
// the other calls only read. The inventory lock is held only to reconcile.
func (inv *Inventory) refresh(ctx context.Context) error {
	inv.refreshMu.Lock()
	defer inv.refreshMu.Unlock()
	if p, ok := inv.cfg.Source.(blankPinner); ok {
		if err := p.PinBlank(ctx); err != nil {
			klog.ErrorS(err, "Pinning blank disks without serial", "node", inv.cfg.Node)
		}
	}
	found, problems, err := inv.cfg.Source.Discover(ctx)
	if err != nil {
		return fmt.Errorf("discovering disks: %w", err)
	}
	var texts []string
	for _, p := range problems {
		klog.ErrorS(p, "Disk discovery problem", "node", inv.cfg.Node)
		texts = append(texts, p.Error())
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	next := inv.rec.Clone()
	next.Problems = texts
	devices, excluded := reconcile(next, found, inv.claimed)
	if err := inv.saveLocked(next); err != nil {
		return err
	}
	inv.rec, inv.devices, inv.excluded = next, devices, excluded
	for id, d := range devices {
		inv.lastPath[id], inv.lastNum[id] = d.Path, d.DevNum
	}
	for _, e := range excluded {
		klog.InfoS("Disk excluded", "disk", e.Disk.ID, "device", e.Disk.Path, "identity", e.Disk.Identity, "reason", e.Reason)
	}
	for _, d := range next.Disks {
		klog.InfoS("Disk managed", "disk", d.ID, "device", devices[d.ID].Path, "identity", d.Identity,
			"status", d.Status, "sizeBytes", d.SizeBytes, "media", d.Media, "category", d.Category, "cloudID", d.CloudID)
		if d.Status == state.Cleaning || d.Status == state.Failed {
			inv.startCleanerLocked(d.ID)
		}
	}
	return nil
}

// reconcile joins the record with the devices found now. It changes rec in
// place and returns the present managed devices and the excluded ones.
// claimed says whether a device is opened exclusively by someone (a use that
// discovery does not see); an excluded disk becomes free again only when it
// is blank and unused, claimed included.
func reconcile(rec *state.Record, found []disk.Disk, claimed func(path string) bool) (map[string]disk.Disk, []Excluded) {
	devices := map[string]disk.Disk{}
	var excluded []Excluded
	seen := map[string]bool{}
	for _, d := range found {
		if seen[d.ID] {
			excluded = append(excluded, Excluded{d, "another device has the same identity " + d.Identity})
			delete(devices, d.ID)
			continue
		}
		seen[d.ID] = true
		r := rec.Disks[d.ID]
		if r == nil || r.Status == state.Free || r.Status == state.Excluded {
			reason := exclusionReason(d)
			switch {
			case reason != "" && r == nil:
				// Never the driver's: not managed at all.
				excluded = append(excluded, Excluded{d, reason})
				continue
			case reason != "":
				// A free disk that now carries data or is in use
				// elsewhere: recorded as excluded, never touched.
				if r.Status == state.Free {
					klog.ErrorS(nil, "Free disk now holds data or is in use; excluded, nothing on it is erased", "disk", d.ID, "device", d.Path, "reason", reason)
					r.Status, r.Reason, r.Cleanup, r.UpdatedAt = state.Excluded, reason, nil, time.Now().UTC()
				}
				excluded = append(excluded, Excluded{d, r.Reason})
			case r != nil && r.Status == state.Excluded && claimed(d.Path):
				excluded = append(excluded, Excluded{d, r.Reason})
			case r != nil && r.Status == state.Excluded:
				klog.InfoS("Excluded disk is blank and unused again; free", "disk", d.ID, "device", d.Path, "previousReason", r.Reason)
				r.Status, r.Reason, r.Cleanup, r.UpdatedAt = state.Free, "", nil, time.Now().UTC()
			}
		}
		if r == nil {
			r = &state.Disk{ID: d.ID, Status: state.Free, UpdatedAt: time.Now().UTC()}
			rec.Disks[d.ID] = r
		}
		r.Identity, r.SizeBytes, r.Media, r.Category, r.CloudID = d.Identity, d.SizeBytes-d.ReservedTailBytes, string(d.Media), d.Category, d.CloudID
		r.InstanceID = d.InstanceID
		r.ReservedTailBytes = d.ReservedTailBytes
		r.DeviceNumber, r.DevicePath = d.DevNum, d.Path
		devices[d.ID] = d
	}
	for id, r := range rec.Disks {
		if _, ok := devices[id]; ok {
			continue
		}
		switch {
		case r.Status == state.Free && !r.Residual:
			delete(rec.Disks, id) // nothing of ours was on it
			continue
		case r.Status == state.Free || r.Status == state.Excluded:
			// Kept while absent: that it may hold an earlier volume's
			// bytes, or why it was excluded, must outlive a restart
			// that did not see it.
			klog.InfoS("Disk not found now; its record is kept", "disk", id, "identity", r.Identity, "status", r.Status, "residual", r.Residual)
			continue
		}
		klog.ErrorS(nil, "Disk holding a volume is missing", "disk", id, "identity", r.Identity, "status", r.Status)
	}
	return devices, excluded
}

// exclusionReason says why a device that holds no volume of ours must not be
// used, or "" when it is a blank, unused whole disk.
func exclusionReason(d disk.Disk) string {
	f := d.Facts
	switch {
	case f.System:
		return "system disk"
	case f.DeviceMapper:
		return "device-mapper device"
	case len(f.DeviceNodeBinds) > 0:
		return "device node bind-mounted at " + strings.Join(f.DeviceNodeBinds, ",")
	case f.Mounted:
		return "mounted"
	case f.Partitioned:
		return "has partitions"
	case len(f.Holders) > 0:
		return "in use by " + strings.Join(f.Holders, ",")
	case f.ReadOnly:
		return "read-only device"
	case len(f.Signatures) > 0:
		return "carries signatures the driver did not create: " + strings.Join(f.Signatures, ",")
	case d.SizeBytes <= 0:
		return "zero size"
	}
	return ""
}

// Stop ends background work (cleaning, zeroing, fresh probes) and waits
// for it; none starts afterwards.
func (inv *Inventory) Stop() {
	inv.mu.Lock()
	inv.stopped = true
	inv.mu.Unlock()
	inv.cancel()
	inv.cleaner.Wait()
}

// Ready reports whether the inventory is loaded, and the start-up error if not.
func (inv *Inventory) Ready() (bool, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.ready, inv.startErr
}

// Node is the node ID the inventory serves.
func (inv *Inventory) Node() string { return inv.cfg.Node }

// Allocate returns the volume named req.Name, allocating the smallest free
// matching disk that satisfies the capacity range if the name is new. The
// chosen disk is checked right before it is given out: it must still be
// the same disk, unused and blank; a disk that is not is excluded (nothing
// on it is touched) and the next one is tried. The allocation is persisted
// before Allocate returns.
func (inv *Inventory) Allocate(ctx context.Context, req Request) (Volume, error) {
	done, err := inv.claimName(ctx, req.Name)
	if err != nil {
		return Volume{}, err
	}
	defer done()
	unconfirmed := map[string]bool{} // disks whose check could not conclude
	for {
		inv.mu.Lock()
		if !inv.ready {
			inv.mu.Unlock()
			return Volume{}, ErrNotReady
		}
		if v, ok := inv.byNameLocked(req.Name); ok {
			inv.mu.Unlock()
			return v, compatible(v, req)
		}
		best, err := inv.pickLocked(req, unconfirmed)
		if err != nil {
			inv.mu.Unlock()
			return Volume{}, err
		}
		inv.reserved[best] = true
		path := inv.devices[best].Path
		inv.mu.Unlock()

		checkErr := inv.checkBlank(ctx, best, path)

		inv.mu.Lock()
		delete(inv.reserved, best)
		v, done, err := inv.allocateLocked(req, best, checkErr)
		inv.mu.Unlock()
		if checkErr != nil {
			unconfirmed[best] = true
		}
		if done || err != nil {
			return v, err
		}
	}
}

// claimName waits until no other Allocate of name runs and returns the
// function that lets the next one go: calls for one name run one at a
// time, so that a retry finds the volume the first call made rather than
// the disks it holds reserved while it checks them.
func (inv *Inventory) claimName(ctx context.Context, name string) (func(), error) {
	for {
		inv.mu.Lock()
		busy, ok := inv.allocating[name]
		if !ok {
			ch := make(chan struct{})
			inv.allocating[name] = ch
			inv.mu.Unlock()
			return func() {
				inv.mu.Lock()
				delete(inv.allocating, name)
				inv.mu.Unlock()
				close(ch)
			}, nil
		}
		inv.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for another CreateVolume of %s: %v", ErrBusy, name, ctx.Err())
		}
	}
}

// pickLocked chooses the disk for a new volume: the smallest free, present,
// unreserved disk that matches and fits, and is not in skip. Of equal sizes, a block volume
// takes a disk known to hold no earlier volume's bytes, a filesystem volume
// one that may (a new filesystem exposes none of them). No disk that fits
// is ErrExhausted, with the reason.
func (inv *Inventory) pickLocked(req Request, skip map[string]bool) (string, error) {
	var best *state.Disk
	fits := false
	better := func(d *state.Disk) bool {
		if d.SizeBytes != best.SizeBytes {
			return d.SizeBytes < best.SizeBytes
		}
		if d.Residual != best.Residual {
			return d.Residual != req.Filter.Raw
		}
		return d.ID < best.ID
	}
	for _, d := range inv.rec.Disks {
		if !req.Filter.match(d) || !inRange(d.SizeBytes, req.RequiredBytes, req.LimitBytes) {
			continue
		}
		fits = true
		if _, present := inv.devices[d.ID]; !present || !inv.allocatableLocked(d) || inv.reserved[d.ID] || skip[d.ID] {
			continue
		}
		if best == nil || better(d) {
			best = d
		}
	}
	switch {
	case best != nil:
		return best.ID, nil
	case fits:
		cordoned, damaged := inv.withdrawnFreeLocked()
		return "", fmt.Errorf("%w: %d free (%d of them cordoned, %d damaged) of %d managed disks on node %s", ErrExhausted, inv.countLocked(state.Free), cordoned, damaged, len(inv.rec.Disks), inv.cfg.Node)
	}
	return "", fmt.Errorf("%w: %s", ErrOutOfRange, inv.sizesLocked(req.Filter))
}

// allocateLocked gives disk id to the new volume once checkBlank has looked
// at the device (checkErr). A disk found holding or used by something else
// is excluded, and done is false so that the caller picks again; so it is
// when the disk changed hands while it was checked. inv.mu must be held.
func (inv *Inventory) allocateLocked(req Request, id string, checkErr error) (Volume, bool, error) {
	if v, ok := inv.byNameLocked(req.Name); ok {
		return v, true, compatible(v, req)
	}
	d := inv.rec.Disks[id]
	if d == nil || !inv.allocatableLocked(d) {
		return Volume{}, false, nil
	}
	switch {
	case isForeign(checkErr):
		return Volume{}, false, inv.excludeLocked(id, checkErr.Error())
	case checkErr != nil:
		// Renamed, swapped, or a probe that failed: not given out now,
		// and not excluded either; the next call looks again.
		klog.InfoS("Disk not allocated: its device could not be confirmed", "disk", id, "err", checkErr.Error())
		return Volume{}, false, nil
	}
	next := inv.rec.Clone()
	d = next.Disks[id]
	vid := VolumeID{Node: inv.cfg.Node, Disk: d.ID, Nonce: newNonce()}.String()
	if len(vid) > MaxVolumeIDLength {
		// Every later call would be refused for the ID's length: better
		// no volume than one nobody can use.
		return Volume{}, true, fmt.Errorf("volume ID %s would be %d bytes, more than the CSI limit of %d: the node ID %q (%d bytes) is too long for disk %s",
			vid, len(vid), MaxVolumeIDLength, inv.cfg.Node, len(inv.cfg.Node), d.ID)
	}
	d.Status, d.UpdatedAt, d.Reason = state.Allocated, time.Now().UTC(), ""
	d.CleanupPolicy = req.CleanupPolicy
	d.Volume = &state.Volume{
		ID: vid, Name: req.Name, CapacityBytes: d.SizeBytes, Parameters: req.Parameters,
		FSUUID: fsUUID(vid), CreatedAt: d.UpdatedAt, PV: req.PV, ClaimNamespace: req.ClaimNamespace, ClaimName: req.ClaimName,
	}
	if err := inv.commitLocked(next); err != nil {
		return Volume{}, true, err
	}
	klog.InfoS("Disk allocated", "volumeID", vid, "name", req.Name, "disk", d.ID, "device", inv.devices[d.ID].Path, "sizeBytes", d.SizeBytes, "residual", d.Residual)
	return inv.volumeLocked(d), true, nil
}

func inRange(size, required, limit int64) bool {
	return size >= required && (limit == 0 || size <= limit)
}

func compatible(v Volume, req Request) error {
	if !inRange(v.CapacityBytes, req.RequiredBytes, req.LimitBytes) {
		return fmt.Errorf("%w: volume %s has %d bytes, outside the requested range", ErrExists, v.ID, v.CapacityBytes)
	}
	if !equalParams(v.Parameters, req.Parameters) || v.Disk.CleanupPolicy != req.CleanupPolicy {
		return fmt.Errorf("%w: volume %s was created with other parameters", ErrExists, v.ID)
	}
	return nil
}

func equalParams(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// fsUUID derives the UUID of the filesystem the driver creates for a volume,
// so the driver can later recognise its own filesystem.
func fsUUID(volumeID string) string {
	s := sha256.Sum256([]byte("ecs-localdisk-csi:" + volumeID))
	s[6] = (s[6] & 0x0f) | 0x50 // version 5 layout
	s[8] = (s[8] & 0x3f) | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", s[0:4], s[4:6], s[6:8], s[8:10], s[10:16])
}

func (inv *Inventory) commitLocked(next *state.Record) error {
	if err := inv.saveLocked(next); err != nil {
		return err
	}
	inv.rec = next
	return nil
}

// saveLocked persists next and tells the observer. inv.mu must be held.
func (inv *Inventory) saveLocked(next *state.Record) error {
	start := time.Now()
	err := inv.cfg.Store.Save(next)
	inv.cfg.Observer.StateSaved(time.Since(start), err)
	if err != nil {
		return fmt.Errorf("saving node state: %w", err)
	}
	inv.cfg.Observer.Changed()
	return nil
}

func (inv *Inventory) countLocked(s state.Status) int {
	n := 0
	for _, d := range inv.rec.Disks {
		if d.Status == s {
			n++
		}
	}
	return n
}

// withdrawnFreeLocked counts the free disks cordoned and those damaged.
func (inv *Inventory) withdrawnFreeLocked() (cordoned, damaged int) {
	for id, d := range inv.rec.Disks {
		if d.Status != state.Free {
			continue
		}
		if inv.rec.Cordoned[id] {
			cordoned++
		}
		if inv.rec.Damaged[id] != "" {
			damaged++
		}
	}
	return cordoned, damaged
}

func (inv *Inventory) sizesLocked(f Filter) string {
	var sizes []string
	for _, d := range inv.rec.Disks {
		if f.match(d) {
			sizes = append(sizes, fmt.Sprint(d.SizeBytes))
		}
	}
	sort.Strings(sizes)
	if len(sizes) == 0 {
		return "no managed disk matches the class"
	}
	return "matching disk sizes in bytes: " + strings.Join(sizes, ",")
}

func (inv *Inventory) byNameLocked(name string) (Volume, bool) {
	for _, d := range inv.rec.Disks {
		if d.Volume != nil && d.Volume.Name == name && d.Status == state.Allocated {
			return inv.volumeLocked(d), true
		}
	}
	return Volume{}, false
}

func (inv *Inventory) volumeLocked(d *state.Disk) Volume {
	return Volume{Volume: *d.Volume, Disk: *d, Device: inv.devices[d.ID], Damaged: inv.rec.Damaged[d.ID]}
}

// Lookup returns the allocated volume with this ID. It only reads.
func (inv *Inventory) Lookup(volumeID string) (Volume, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.ready {
		return Volume{}, ErrNotReady
	}
	return inv.lookupLocked(volumeID)
}

func (inv *Inventory) lookupLocked(volumeID string) (Volume, error) {
	id, err := ParseVolumeID(volumeID)
	if err != nil || id.Node != inv.cfg.Node {
		return Volume{}, fmt.Errorf("%w: %.160q", ErrNotFound, volumeID)
	}
	d := inv.rec.Disks[id.Disk]
	if d == nil || d.Volume == nil || d.Volume.ID != volumeID || d.Status != state.Allocated {
		return Volume{}, fmt.Errorf("%w: %.160q", ErrNotFound, volumeID)
	}
	return inv.volumeLocked(d), nil
}

// Device returns the volume and the path of its device now, after checking
// that the device at that path still has the disk's identity. A device that
// was renamed is found again by a fresh discovery. A disk that is not found
// is ErrIdentityMismatch, naming both identities, while another disk sits
// where it was last seen since start-up, and ErrDeviceMissing otherwise.
func (inv *Inventory) Device(ctx context.Context, volumeID string) (Volume, string, error) {
	v, err := inv.Lookup(volumeID)
	if err != nil {
		return Volume{}, "", err
	}
	return inv.deviceOf(ctx, v)
}

// Acquire is Device for the calls that may change state (stage, publish,
// unstage, unpublish): a volume the record lost is recovered from its disk
// first (see Adopt).
func (inv *Inventory) Acquire(ctx context.Context, volumeID string) (Volume, string, error) {
	v, err := inv.Adopt(ctx, volumeID)
	if err != nil {
		return Volume{}, "", err
	}
	return inv.deviceOf(ctx, v)
}

func (inv *Inventory) deviceOf(ctx context.Context, v Volume) (Volume, string, error) {
	volumeID := v.ID
	if v.Device.Path != "" {
		id, identity, err := inv.cfg.Source.Identify(ctx, v.Device.Path)
		if err == nil && id == v.Disk.ID {
			return v, v.Device.Path, nil
		}
		klog.InfoS("Device changed since discovery, rediscovering", "volumeID", volumeID, "disk", v.Disk.ID,
			"device", v.Device.Path, "foundIdentity", identity, "err", err)
	}
	path, err := inv.rediscover(ctx, v.Disk.ID)
	if err != nil {
		return Volume{}, "", err
	}
	if path == "" {
		if last := inv.lastPathOf(v.Disk.ID); last != "" {
			if _, identity, err := inv.cfg.Source.Identify(ctx, last); err == nil {
				return Volume{}, "", fmt.Errorf("%w: volume %s needs disk %s but %s is now %s", ErrIdentityMismatch, volumeID, v.Disk.Identity, last, identity)
			}
		}
		return Volume{}, "", fmt.Errorf("%w: disk %s (%s) of volume %s", ErrDeviceMissing, v.Disk.ID, v.Disk.Identity, volumeID)
	}
	v.Device = inv.device(v.Disk.ID)
	return v, path, nil
}

// rediscover runs discovery again, updates the paths of managed devices and
// returns the path of the wanted disk ("" when it is absent).
func (inv *Inventory) rediscover(ctx context.Context, diskID string) (string, error) {
	found, _, err := inv.cfg.Source.Discover(ctx)
	if err != nil {
		return "", fmt.Errorf("rediscovering disks: %w", err)
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	for _, d := range found {
		if _, managed := inv.rec.Disks[d.ID]; managed {
			inv.devices[d.ID] = d
			inv.lastPath[d.ID], inv.lastNum[d.ID] = d.Path, d.DevNum
		}
	}
	for id, d := range inv.devices {
		if !containsID(found, id) || d.ID != id {
			delete(inv.devices, id)
		}
	}
	inv.cfg.Observer.Changed()
	return inv.devices[diskID].Path, nil
}

func containsID(ds []disk.Disk, id string) bool {
	for _, d := range ds {
		if d.ID == id {
			return true
		}
	}
	return false
}

// lastPathOf is the device path the disk was last found at since start-up,
// "" when it has not been seen.
func (inv *Inventory) lastPathOf(id string) string {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.lastPath[id]
}

// LastDevice is where the disk of the allocated volume volumeID was last
// seen, by this process or one before it: the device path and number
// ("MAJ:MIN"), and whether another disk sits at that path now (its
// identity read and not the volume's disk's). Empty when unknown.
func (inv *Inventory) LastDevice(ctx context.Context, volumeID string) (path, number string, otherThere bool) {
	inv.mu.Lock()
	v, err := inv.lookupLocked(volumeID)
	if !inv.ready || err != nil {
		inv.mu.Unlock()
		return "", "", false
	}
	path, number = v.Disk.DevicePath, v.Disk.DeviceNumber
	if p := inv.lastPath[v.Disk.ID]; p != "" {
		path, number = p, inv.lastNum[v.Disk.ID] // seen by this process, maybe after a rename
	}
	inv.mu.Unlock()
	if path != "" {
		id, _, err := inv.cfg.Source.Identify(ctx, path)
		otherThere = err == nil && id != v.Disk.ID
	}
	return path, number, otherThere
}

func (inv *Inventory) device(id string) disk.Disk {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.devices[id]
}

// Release marks the volume's disk for cleaning and starts the cleaner. A
// volume that does not exist is already released. A volume whose device is
// still mounted is refused with ErrInUse.
func (inv *Inventory) Release(ctx context.Context, volumeID string) error {
	if _, err := inv.Adopt(ctx, volumeID); errors.Is(err, ErrNotFound) {
		return nil // already deleted, or never ours
	} else if err != nil {
		return err // the release is not recorded: the CO must retry
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	v, err := inv.lookupLocked(volumeID)
	if errors.Is(err, ErrNotFound) {
		return nil // released meanwhile
	}
	if err != nil {
		return err
	}
	if path := inv.devices[v.Disk.ID].Path; path != "" {
		if mounts, err := inv.mountsOf(path); err != nil {
			return err
		} else if len(mounts) > 0 {
			return fmt.Errorf("%w: %s is mounted at %s", ErrInUse, path, strings.Join(mounts, ", "))
		}
	}
	next := inv.rec.Clone()
	d := next.Disks[v.Disk.ID]
	d.Status, d.Cleanup, d.UpdatedAt = state.Cleaning, nil, time.Now().UTC()
	if err := inv.commitLocked(next); err != nil {
		return err
	}
	klog.InfoS("Volume deleted, disk cleaning", "volumeID", volumeID, "disk", d.ID, "cleanupPolicy", d.CleanupPolicy)
	inv.startCleanerLocked(d.ID)
	return nil
}

// mountsOf lists where the device at path is in use: filesystem mounts and
// bind mounts of its device node. A device that is gone has no mounts.
func (inv *Inventory) mountsOf(path string) ([]string, error) {
	return inv.mountsIn(path, nil)
}

// mountsIn is mountsOf with the mounts looked up in table; nil reads the
// mount table now.
func (inv *Inventory) mountsIn(path string, table *mounter.MountTable) ([]string, error) {
	var uses []mounter.Use
	var err error
	if table != nil {
		uses, err = table.Uses(inv.cfg.Mounter, path)
	} else {
		uses, err = mounter.Uses(inv.cfg.Mounter, path)
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, u := range uses {
		out = append(out, u.MountPoint)
	}
	return out, nil
}

// Capacity sums the free matching disks and finds the largest one. Each
// free disk is looked at first: one that now carries data or is in use is
// excluded and counts for nothing, so that no claim is sent here for a disk
// that CreateVolume would refuse.
func (inv *Inventory) Capacity(ctx context.Context, f Filter) (available, maximum int64, err error) {
	inv.mu.Lock()
	if !inv.ready {
		inv.mu.Unlock()
		return 0, 0, ErrNotReady
	}
	free := map[string]freeDisk{}
	for _, d := range inv.rec.Disks {
		if dev, present := inv.devices[d.ID]; present && inv.allocatableLocked(d) && f.match(d) && !inv.reserved[d.ID] {
			free[d.ID] = freeDisk{dev.Path, d.UpdatedAt}
		}
	}
	inv.mu.Unlock()
	table, err := mounter.ReadMountTable(inv.cfg.Mounter)
	if err != nil {
		return 0, 0, err
	}
	checked := inv.checkFreeAll(ctx, free, table)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	for id, cerr := range checked {
		counts, err := inv.settleLocked(id, free[id].updated, cerr)
		if err != nil {
			return 0, 0, err
		}
		if !counts {
			continue
		}
		d := inv.rec.Disks[id]
		available += d.SizeBytes
		maximum = max(maximum, d.SizeBytes)
	}
	return available, maximum, nil
}

// capacityChecks bounds how many disks Capacity looks at in parallel.
const capacityChecks = 8

// freeDisk is a free disk as Capacity found it: its device path, and when
// its record last changed.
type freeDisk struct {
	path    string
	updated time.Time
}

// checkFreeAll runs checkFree on each disk, several at a time: the checks
// of different disks share nothing, and a probe waits on tools (blkid,
// wipefs) more than it computes.
func (inv *Inventory) checkFreeAll(ctx context.Context, disks map[string]freeDisk, table *mounter.MountTable) map[string]error {
	out := make(map[string]error, len(disks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, capacityChecks)
	for id, fd := range disks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := inv.checkFree(ctx, id, fd.path, fd.updated, table, inv.cfg.ProbeMaxAge)
			mu.Lock()
			out[id] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// allocatableLocked says whether disk d may be handed out: free, not
// cordoned and not damaged. inv.mu must be held.
func (inv *Inventory) allocatableLocked(d *state.Disk) bool {
	return d.Status == state.Free && !inv.rec.Cordoned[d.ID] && inv.rec.Damaged[d.ID] == ""
}

// maxDamage bounds the reason a damaged disk is recorded with.
const maxDamage = 1024

// SetDamaged records that the cloud reports disk id damaged, and why, or
// (reason "") that it no longer does. A damaged disk leaves allocation and
// capacity, and the volume on it, if any, is reported abnormal; nothing
// on the disk is touched. It reports whether that changed anything.
func (inv *Inventory) SetDamaged(id, reason string) (bool, error) {
	if len(reason) > maxDamage {
		reason = reason[:maxDamage]
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.ready {
		return false, ErrNotReady
	}
	if inv.rec.Damaged[id] == reason {
		return false, nil
	}
	next := inv.rec.Clone()
	if reason != "" {
		if next.Damaged == nil {
			next.Damaged = map[string]string{}
		}
		next.Damaged[id] = reason
	} else {
		delete(next.Damaged, id)
	}
	if err := inv.commitLocked(next); err != nil {
		return false, err
	}
	klog.InfoS("Disk damage changed", "disk", id, "damaged", reason != "", "reason", reason)
	return true, nil
}

// SetCordoned withdraws disk id from allocation and capacity (cordoned) or
// gives it back, and records that in the state. It reports whether that
// changed anything. A disk the node does not manage may be cordoned too:
// the cordon holds once the disk is found usable. A cordon never touches a
// volume that lives on the disk.
func (inv *Inventory) SetCordoned(id string, cordoned bool) (bool, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.ready {
		return false, ErrNotReady
	}
	if inv.rec.Cordoned[id] == cordoned {
		return false, nil
	}
	next := inv.rec.Clone()
	if cordoned {
		if next.Cordoned == nil {
			next.Cordoned = map[string]bool{}
		}
		next.Cordoned[id] = true
	} else {
		delete(next.Cordoned, id)
	}
	if err := inv.commitLocked(next); err != nil {
		return false, err
	}
	klog.InfoS("Disk cordon changed", "disk", id, "cordoned", cordoned)
	return true, nil
}

// Volumes lists the allocated volumes sorted by ID.
func (inv *Inventory) Volumes() ([]Volume, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.ready {
		return nil, ErrNotReady
	}
	var out []Volume
	for _, d := range inv.rec.Disks {
		if d.Status == state.Allocated && d.Volume != nil {
			out = append(out, inv.volumeLocked(d))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ManagedDisks is the number of disks the node manages, in use or free; 0
// before the record has loaded.
func (inv *Inventory) ManagedDisks() int {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.rec == nil {
		return 0
	}
	return inv.usableLocked()
}

// usableLocked counts the managed disks that can hold a volume: not
// excluded, and present unless a volume lives on them.
func (inv *Inventory) usableLocked() int {
	n := 0
	for id, d := range inv.rec.Disks {
		if _, present := inv.devices[id]; d.Status != state.Excluded && (present || d.Status != state.Free) {
			n++
		}
	}
	return n
}

// claimed says whether the device at path is opened exclusively by someone
// now (mounted, held, or claimed by another program).
func (inv *Inventory) claimed(path string) bool {
	return errors.Is(inv.cfg.Mounter.CheckUnclaimed(path), syscall.EBUSY)
}

// VolumeLimit is the number of volumes this node can hold at most: its
// managed disks. ErrNotReady until the inventory has started, so that no
// caller caches a limit read from a record that is not loaded.
func (inv *Inventory) VolumeLimit() (int, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.ready || inv.rec == nil {
		return 0, ErrNotReady
	}
	return inv.usableLocked(), nil
}

// Snapshot returns a copy of the state record and the excluded devices, for
// status reporting and tests.
func (inv *Inventory) Snapshot() (*state.Record, []Excluded) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.rec == nil {
		return state.New(inv.cfg.Node), nil
	}
	return inv.rec.Clone(), append([]Excluded(nil), inv.excluded...)
}
