package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// DefaultDevicePatterns are where the ECS source looks for local disks:
// virtio, NVMe, SCSI and Xen names. Partitions are skipped.
var DefaultDevicePatterns = []string{"/dev/vd*", "/dev/nvme*n*", "/dev/sd*", "/dev/xvd*"}

// cloudAPI is what the source needs of the ECS OpenAPI.
type cloudAPI interface {
	InstanceDisks(ctx context.Context, instanceID string) ([]CloudDisk, error)
	InstanceType(ctx context.Context, name string) (InstanceType, error)
}

// SourceConfig wires the ECS disk source.
type SourceConfig struct {
	Metadata *Metadata
	API      cloudAPI
	// Devices lists the candidate block devices with their identities.
	Devices disk.Source
	// CachePath keeps the last inventory the cloud confirmed, so that the node
	// can serve its disks while the cloud is unreachable.
	CachePath string
	// DiscoverTimeout bounds the cloud calls of one discovery; default 30s.
	DiscoverTimeout time.Duration
	// RetryInterval is how often an unreachable cloud is retried in the
	// background; default 30s.
	RetryInterval time.Duration
	// Fallback, when set, identifies local disks that have no serial
	// (instances created before mid-2020) by name and pins them.
	Fallback *Fallback
	// RecheckInterval is how soon the cloud is asked again when the
	// devices no longer agree with what it said (a device whose serial it
	// does not list, a local disk it lists without a device: ECS replaced
	// or re-initialised a damaged disk); default 1 minute.
	RecheckInterval time.Duration
}

// Fallback is the serial-less method of the LocalVolume provisioner, made
// safer: the instance type gives the count, StartWith the first name (vdb),
// and each disk is pinned at first use so that a later rename is detected.
type Fallback struct {
	StartWith string
	Pinner    Pinner
}

// Source is the ECS disk source: it serves exactly the block devices whose
// serial the ECS API lists as a local disk of this instance.
type Source struct {
	cfg SourceConfig

	mu        sync.Mutex
	confirmed *confirmed // nil until the cloud answered in this process
	retrying  bool
	// recheck is the current spacing of rechecks (recheckAfter).
	recheck time.Duration
	changed chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// confirmed is what the cloud said, as cached on disk.
type confirmed struct {
	InstanceID string      `json:"instanceID"`
	Expected   int         `json:"expected"` // LocalStorageAmount of the type, -1 unknown
	Category   string      `json:"category"` // LocalStorageCategory of the type
	Disks      []CloudDisk `json:"disks"`
	At         time.Time   `json:"at"`
}

var _ disk.Source = (*Source)(nil)

// NewSource returns the ECS source.
func NewSource(cfg SourceConfig) (*Source, error) {
	if cfg.Metadata == nil || cfg.API == nil || cfg.Devices == nil || cfg.CachePath == "" {
		return nil, errors.New("ECS disk source: metadata, API, devices and cache path are required")
	}
	if cfg.DiscoverTimeout == 0 {
		cfg.DiscoverTimeout = 30 * time.Second
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = 30 * time.Second
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Source{cfg: cfg, changed: make(chan struct{}, 1), ctx: ctx, cancel: cancel}, nil
}

// Close stops the background retries.
func (s *Source) Close() {
	s.cancel()
	s.wg.Wait()
}

// Changed receives a value when the cloud confirmed the inventory after an
// earlier discovery had to do without it: discovery is worth running again.
func (s *Source) Changed() <-chan struct{} { return s.changed }

// fromCloud asks the metadata server and the API.
func (s *Source) fromCloud(ctx context.Context) (*confirmed, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DiscoverTimeout)
	defer cancel()
	in, err := s.cfg.Metadata.Instance(ctx)
	if err != nil {
		return nil, err
	}
	disks, err := s.cfg.API.InstanceDisks(ctx, in.ID)
	if err != nil {
		return nil, err
	}
	c := &confirmed{InstanceID: in.ID, Expected: -1, Disks: disks, At: time.Now().UTC()}
	if t, err := s.cfg.API.InstanceType(ctx, in.Type); err != nil {
		klog.ErrorS(err, "Cannot learn the instance type's local disk count", "instanceType", in.Type)
	} else {
		c.Expected, c.Category = t.LocalStorageAmount, t.LocalStorageCategory
	}
	return c, nil
}

// current returns what the cloud confirmed: asked once per process, else
// the cache on disk while the cloud is unreachable (retried in background).
func (s *Source) current(ctx context.Context) (*confirmed, string, error) {
	s.mu.Lock()
	c := s.confirmed
	s.mu.Unlock()
	if c != nil {
		return c, "cloud", nil
	}
	c, err := s.fromCloud(ctx)
	if err == nil {
		s.remember(c)
		return c, "cloud", nil
	}
	s.startRetry()
	cached, cerr := s.loadCache()
	switch {
	case cerr == nil:
		return cached, "cache", fmt.Errorf("cloud unreachable, serving the inventory it confirmed at %s: %w", cached.At.Format(time.RFC3339), err)
	case os.IsNotExist(cerr):
		return nil, "none", fmt.Errorf("cloud unreachable and no inventory confirmed before; no disk is served until it answers: %w", err)
	default:
		return nil, "none", fmt.Errorf("cloud unreachable (%v) and the cached inventory is unreadable: %w", err, cerr)
	}
}

func (s *Source) remember(c *confirmed) {
	s.mu.Lock()
	s.confirmed = c
	s.mu.Unlock()
	b, err := json.MarshalIndent(c, "", "  ")
	if err == nil {
		err = state.WriteFileAtomic(s.cfg.CachePath, b)
	}
	if err != nil {
		klog.ErrorS(err, "Saving the confirmed ECS inventory", "path", s.cfg.CachePath)
	}
}

func (s *Source) loadCache() (*confirmed, error) {
	b, err := os.ReadFile(s.cfg.CachePath)
	if err != nil {
		return nil, err
	}
	var c confirmed
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// startRetry asks the cloud in the background until it answers, then
// signals Changed.
func (s *Source) startRetry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retrying {
		return
	}
	s.retrying = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(s.cfg.RetryInterval):
			}
			c, err := s.fromCloud(s.ctx)
			if err != nil {
				klog.ErrorS(err, "ECS still unreachable, retrying", "retryIn", s.cfg.RetryInterval)
				continue
			}
			s.remember(c)
			s.mu.Lock()
			s.retrying = false
			s.mu.Unlock()
			klog.InfoS("ECS answered, inventory confirmed", "instanceID", c.InstanceID, "localDisks", len(c.Disks))
			select {
			case s.changed <- struct{}{}:
			default:
			}
			return
		}
	}()
}

// Discover returns the devices whose serial the cloud lists as this
// instance's local disks, with their ECS disk ID and category. Devices the
// cloud does not list, and local disks without a device, are reported as
// problems; cloud disks (system, data) are left out quietly.
//
// Discover only reads: a blank device the serial-less fallback would take
// is left out until PinBlank has pinned it.
func (s *Source) Discover(ctx context.Context) ([]disk.Disk, []error, error) {
	return s.discover(ctx, false)
}

// PinBlank pins the blank devices that the serial-less fallback takes and
// that carry no pin yet. It writes to those devices (their last PinBytes)
// and nothing else; the inventory calls it with its lock held, before a
// discovery that may change the record, so that no two calls pin one disk.
func (s *Source) PinBlank(ctx context.Context) error {
	if s.cfg.Fallback == nil {
		return nil
	}
	_, _, err := s.discover(ctx, true)
	return err
}

func (s *Source) discover(ctx context.Context, pin bool) ([]disk.Disk, []error, error) {
	c, from, cerr := s.current(ctx)
	devices, problems, err := s.cfg.Devices.Discover(ctx)
	if err != nil {
		return nil, nil, err
	}
	if c != nil && from == "cloud" && disagrees(c, devices) && time.Since(c.At) >= s.recheckAfter() {
		// ECS may have replaced a disk since it was asked: ask again.
		if fresh, err := s.fromCloud(ctx); err != nil {
			klog.ErrorS(err, "The devices no longer agree with ECS's last answer, and ECS could not be asked again")
		} else {
			s.rechecked(sameDisks(c, fresh))
			klog.InfoS("The devices no longer agreed with ECS's last answer: asked again", "instanceID", fresh.InstanceID,
				"localDisks", len(fresh.Disks), "nextCheckAfter", s.recheckAfter())
			s.remember(fresh)
			c = fresh
		}
	}
	if cerr != nil {
		problems = append(problems, cerr)
	}
	if c == nil {
		return nil, problems, nil
	}
	bySerial := map[string]CloudDisk{}
	local := 0
	for _, d := range c.Disks {
		bySerial[d.Serial] = d
		if d.Local {
			local++
		}
	}
	var out, rest []disk.Disk
	matched := map[string]bool{}
	for _, d := range devices {
		serial := SerialOf(d.Identity)
		cd, ok := bySerial[serial]
		switch {
		case ok && cd.Local:
			d.ID, d.Identity = disk.MakeID("serial", serial), "serial:"+serial
			d.CloudID, d.Category, d.InstanceID = cd.ID, cd.Category, c.InstanceID
			out = append(out, d)
			matched[cd.ID] = true
		case ok:
			// A cloud disk of this instance (system or data disk): not ours.
		default:
			rest = append(rest, d)
		}
	}
	unmatched := 0
	for _, d := range c.Disks {
		if d.Local && !matched[d.ID] {
			unmatched++
		}
	}
	if s.cfg.Fallback != nil && unmatched > 0 {
		pinned, left, fbProblems := s.fallback(c, rest, unmatched, pin)
		out, rest, problems = append(out, pinned...), left, append(problems, fbProblems...)
		unmatched -= len(pinned)
	}
	for _, d := range rest {
		problems = append(problems, fmt.Errorf("device %s (%s) is not a local disk of instance %s according to ECS; it is not used", d.Path, d.Identity, c.InstanceID))
	}
	if unmatched > 0 {
		for _, d := range c.Disks {
			if d.Local && !matched[d.ID] {
				problems = append(problems, fmt.Errorf("ECS lists local disk %s (%s, serial %s) but no device has that serial", d.ID, d.Category, d.Serial))
			}
		}
	}
	if c.Expected >= 0 && c.Expected != local {
		problems = append(problems, fmt.Errorf("instance type expects %d local disks, ECS lists %d", c.Expected, local))
	}
	klog.InfoS("ECS disk discovery", "instanceID", c.InstanceID, "from", from, "expected", c.Expected, "cloudLocalDisks", local, "matched", len(out), "problems", len(problems))
	return out, problems, nil
}

// Identify reads the serial of the device now at path, or its pin when the
// fallback is on and the device has no serial.
func (s *Source) Identify(ctx context.Context, path string) (string, string, error) {
	_, identity, err := s.cfg.Devices.Identify(ctx, path)
	if err != nil {
		return "", "", err
	}
	if s.cfg.Fallback != nil && !strings.HasPrefix(identity, "serial:") {
		if p, ok, err := s.cfg.Fallback.Pinner.Read(path); err == nil && ok {
			return disk.MakeID("pin", p.ID), "pin:" + p.ID, nil
		}
	}
	serial := SerialOf(identity)
	if serial == "" {
		return "", "", fmt.Errorf("%s: no serial (%s)", path, identity)
	}
	return disk.MakeID("serial", serial), "serial:" + serial, nil
}

// fallback takes up to want devices without a serial, in the order of the
// names from StartWith, and identifies each by its pin, pinning blank ones
// when pin is set. It returns the pinned disks and the devices it did not
// take.
func (s *Source) fallback(c *confirmed, candidates []disk.Disk, want int, pin bool) (pinned, left []disk.Disk, problems []error) {
	count := c.Expected
	if count < 0 {
		count = want
	}
	byName := map[string]disk.Disk{}
	for _, d := range candidates {
		byName[d.Name] = d
	}
	taken := map[string]bool{}
	for _, name := range deviceNames(s.cfg.Fallback.StartWith, count) {
		d, ok := byName[name]
		switch {
		case len(pinned) == want:
		case !ok:
			problems = append(problems, fmt.Errorf("serial-less fallback: no candidate device %s", name))
		case strings.HasPrefix(d.Identity, "serial:"):
			// Has a real serial the cloud does not list: not a local disk.
		default:
			p, err := s.pinOf(c, d, pin)
			if err != nil {
				problems = append(problems, fmt.Errorf("serial-less fallback: %s: %w", d.Path, err))
				continue
			}
			taken[name] = true
			d.ID, d.Identity = disk.MakeID("pin", p.ID), "pin:"+p.ID
			d.Category, d.ReservedTailBytes, d.InstanceID = c.Category, PinReserve, c.InstanceID
			pinned = append(pinned, d)
		}
	}
	for _, d := range candidates {
		if !taken[d.Name] {
			left = append(left, d)
		}
	}
	return pinned, left, problems
}

// errNotPinned: a blank device the fallback takes has no pin yet.
var errNotPinned = errors.New("blank and not pinned yet; pinned at the next refresh of the inventory")

// pinOf reads the device's pin, or pins it if it is blank and pin is set.
func (s *Source) pinOf(c *confirmed, d disk.Disk, pin bool) (Pin, error) {
	p, ok, err := s.cfg.Fallback.Pinner.Read(d.Path)
	if err != nil {
		return Pin{}, err
	}
	if ok {
		if p.InstanceID != c.InstanceID {
			return Pin{}, fmt.Errorf("pinned on instance %s, not %s; not used", p.InstanceID, c.InstanceID)
		}
		return p, nil
	}
	if f := d.Facts; len(f.Signatures) > 0 || f.Mounted || f.Partitioned || len(f.Holders) > 0 || f.System {
		return Pin{}, errors.New("carries data but no pin: the driver did not create it and does not use it")
	}
	if !pin {
		return Pin{}, errNotPinned
	}
	p = Pin{ID: newPinID(), InstanceID: c.InstanceID, FirstName: d.Name}
	if err := s.cfg.Fallback.Pinner.Write(d.Path, p); err != nil {
		return Pin{}, err
	}
	klog.InfoS("Pinned a local disk without serial", "device", d.Path, "pin", p.ID, "instanceID", c.InstanceID)
	return p, nil
}

// AfterWipe writes a wiped disk's pin back: zeroing or discarding erases it.
func (s *Source) AfterWipe(_ context.Context, path, identity string) error {
	id, ok := strings.CutPrefix(identity, "pin:")
	if !ok || s.cfg.Fallback == nil {
		return nil
	}
	if p, found, err := s.cfg.Fallback.Pinner.Read(path); err == nil && found && p.ID == id {
		return nil
	}
	s.mu.Lock()
	instance := ""
	if s.confirmed != nil {
		instance = s.confirmed.InstanceID
	}
	s.mu.Unlock()
	if instance == "" {
		if c, err := s.loadCache(); err == nil {
			instance = c.InstanceID
		}
	}
	return s.cfg.Fallback.Pinner.Write(path, Pin{ID: id, InstanceID: instance})
}

// maxRecheck bounds how far rechecks that change nothing are spaced.
const maxRecheck = time.Hour

// recheckAfter is how old ECS's answer must be before a disagreement asks
// again: RecheckInterval, doubled after each recheck that changed nothing
// (a device ECS will never list, like another product's disk, must not
// cost an API call a minute forever), up to maxRecheck.
func (s *Source) recheckAfter() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recheck == 0 {
		return s.cfg.RecheckInterval
	}
	return s.recheck
}

func (s *Source) rechecked(same bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !same {
		s.recheck = s.cfg.RecheckInterval
		return
	}
	s.recheck = min(2*max(s.recheck, s.cfg.RecheckInterval), maxRecheck)
}

// sameDisks says whether two answers list the same disks.
func sameDisks(a, b *confirmed) bool {
	key := func(c *confirmed) []string {
		var out []string
		for _, d := range c.Disks {
			out = append(out, d.ID+"/"+d.Serial)
		}
		sort.Strings(out)
		return out
	}
	return slices.Equal(key(a), key(b))
}

// disagrees says whether the devices no longer match what the cloud said:
// a device with a serial the cloud does not list, or a local disk the
// cloud lists that no device carries. Serial-less devices do not count:
// the cloud never lists them.
func disagrees(c *confirmed, devices []disk.Disk) bool {
	listed, seen := map[string]bool{}, map[string]bool{}
	for _, d := range c.Disks {
		listed[d.Serial] = true
	}
	for _, d := range devices {
		serial := SerialOf(d.Identity)
		if serial == "" {
			continue
		}
		if !listed[serial] {
			return true
		}
		seen[serial] = true
	}
	for _, d := range c.Disks {
		if d.Local && d.Serial != "" && !seen[d.Serial] {
			return true
		}
	}
	return false
}

// SerialOf extracts the serial from a device identity: a serial as is; a
// by-id link's serial part (virtio-<serial>, nvme-<model>_<serial>); and, for
// loop devices standing in for disks in tests and demos, the backing file.
func SerialOf(identity string) string {
	kind, value, _ := strings.Cut(identity, ":")
	switch kind {
	case "serial", "loop":
		return value
	case "byid":
		if v, ok := strings.CutPrefix(value, "virtio-"); ok {
			return v
		}
		if strings.HasPrefix(value, "nvme-") {
			if i := strings.LastIndex(value, "_"); i >= 0 {
				return value[i+1:]
			}
		}
	}
	return ""
}

// CachePathIn is the cache file's conventional place in a state directory.
func CachePathIn(stateDir string) string { return filepath.Join(stateDir, "ecs-inventory.json") }
