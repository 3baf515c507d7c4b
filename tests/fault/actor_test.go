package fault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// The actor is a third party on the node, besides the CO and the driver:
// it writes signatures onto disks the driver believes free (and now and
// then onto a disk the driver is allocating or cleaning at that very
// moment), bind-mounts device nodes of free disks onto files as the
// kubelet publishes another driver's raw block volume, and mounts tmpfs
// filesystems at paths the CO uses for volumes. Nothing it creates may be
// wiped, formatted, mounted over or unmounted by the driver; a disk it
// planted on or bound is never given to a volume created after it.
//
// It only ever writes onto disks that hold no data the harness verifies:
// disks the state calls free or excluded, the disk a CreateVolume is
// allocating (no data yet), and the disk of a deleted volume.

const (
	// plantBytes: every plant writes only within its disk's first 2 MiB,
	// and its checksum covers exactly them.
	plantBytes = 2 << 20
	// patternOffset is where a swap plant's random pattern starts.
	patternOffset = 64 << 10
	markerName    = "actor-marker"
)

// plantSpec is what the actor writes: the kind of signature, its UUID
// (or dos disk identifier) and, for swap, a random pattern after the
// header. It is drawn from the harness's seeded source before any
// goroutine runs, so that a seed replays the same plants.
type plantSpec struct {
	kind    string // ext4, swap or dos
	uuid    string
	pattern []byte
}

// want is what blkid must read on the disk while the plant is intact.
func (s plantSpec) want() string {
	if s.kind == "dos" {
		return "PTTYPE=dos PTUUID=" + s.uuid
	}
	return "TYPE=" + s.kind + " UUID=" + s.uuid
}

// plant is a signature the actor wrote onto a disk.
type plant struct {
	n    int
	disk string // disk ID in the state
	dev  string
	spec plantSpec
	sum  [32]byte // sha256 of the disk's first plantBytes once planted
	how  string   // free, excluded, race create, plant then create, race delete, down free, down excluded, down cleaning
	// allowed is the one volume (by name) that may hold the disk: the
	// volume a racing CreateVolume allocated, or the deleted volume whose
	// disk was being cleaned. "" for none.
	allowed string
	// settled plants must stay byte for byte. A plant that raced a wipe
	// the driver was entitled to make is not settled until the cleaning
	// is over: then it is either intact and settled, or lost.
	settled bool
}

func (p *plant) String() string {
	return fmt.Sprintf("plant #%d (%s, %s, %s) on disk %s (%s)", p.n, p.spec.kind, p.spec.want(), p.how, p.disk, p.dev)
}

// devBind is a bind mount of a disk's device node onto a regular file.
type devBind struct {
	disk, dev, path string
	rdev            uint64
}

// actorMount is a tmpfs at a path the CO uses, with a marker file inside.
type actorMount struct {
	path, source, marker string
	madeDir              bool // the actor created the directory and removes it again
}

type actor struct {
	n      int
	plants map[string]*plant // by disk ID; one plant per disk at a time
	binds  map[string]*devBind
	mounts map[string]*actorMount // by path
	// touched are the disks the actor planted on, bound or cleared since
	// the driver last started: only those may be excluded.
	touched map[string]bool
	deleted []string // IDs of deleted volumes, for NOT_FOUND probes
	steps   map[string]int
}

func newActor() *actor {
	return &actor{plants: map[string]*plant{}, binds: map[string]*devBind{}, mounts: map[string]*actorMount{},
		touched: map[string]bool{}, steps: map[string]int{}}
}

// holds counts the disks the actor has a plant or a bind on.
func (a *actor) holds() int {
	n := len(a.plants)
	for id := range a.binds {
		if a.plants[id] == nil {
			n++
		}
	}
	return n
}

// unsettled says whether disk id carries a plant still racing a wipe.
func (a *actor) unsettled(id string) bool {
	p := a.plants[id]
	return p != nil && !p.settled
}

// resetTouched forgets the disks the actor no longer uses: a start makes
// a blank, unused excluded disk free again.
func (a *actor) resetTouched() {
	a.touched = map[string]bool{}
	for id := range a.plants {
		a.touched[id] = true
	}
	for id := range a.binds {
		a.touched[id] = true
	}
}

// limit is how many disks the actor may hold at once: half of them, so
// that volumes still come and go.
func (h *harness) actorLimit() int { return max(1, len(h.loops)/2) }

// newSpec draws a plant from the seeded source.
func (h *harness) newSpec() plantSpec {
	s := plantSpec{kind: []string{"ext4", "ext4", "swap", "dos"}[h.rnd.IntN(4)]}
	if s.kind == "dos" {
		s.uuid = fmt.Sprintf("%08x", h.rnd.Uint32()|1)
		return s
	}
	var b [16]byte
	for i := range b {
		b[i] = byte(h.rnd.Uint32())
	}
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	s.uuid = fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	if s.kind == "swap" {
		s.pattern = make([]byte, 4096+h.rnd.IntN(plantBytes-patternOffset-4096))
		for i := range s.pattern {
			s.pattern[i] = byte(h.rnd.Uint32())
		}
	}
	return s
}

// writePlant zeroes the disk's first plantBytes, writes the spec there and
// reads back the checksum and what blkid sees. It touches nothing of the
// harness, so it may race the driver in a goroutine. A tool that finds the
// device opened exclusively (by the driver's checks or wipes) is retried
// for up to patience.
func writePlant(dev string, s plantSpec, patience time.Duration) ([32]byte, string, error) {
	buf := make([]byte, plantBytes)
	copy(buf[patternOffset:], s.pattern)
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return [32]byte{}, "", err
	}
	_, err = f.WriteAt(buf, 0)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		return [32]byte{}, "", fmt.Errorf("writing %s: %w", dev, err)
	}
	var name, stdin string
	var args []string
	switch s.kind {
	case "ext4":
		// 2 MiB of 1 KiB blocks, no journal, no discard: all within plantBytes.
		name, args = "mkfs.ext4", []string{"-q", "-F", "-E", "nodiscard", "-b", "1024", "-O", "^has_journal", "-U", s.uuid, "-L", "fault-actor", dev, "2048"}
	case "swap":
		name, args = "mkswap", []string{"-U", s.uuid, "-L", "fault-actor", dev, "1024"}
	case "dos":
		// An MBR in sector 0 only; the kernel is not told, so no partition devices appear.
		name, args = "sfdisk", []string{"-q", "--no-reread", "--no-tell-kernel", "--wipe", "never", dev}
		stdin = "label: dos\nlabel-id: 0x" + s.uuid + "\n,8MiB,83\n"
	}
	for end := time.Now().Add(patience); ; time.Sleep(3 * time.Millisecond) {
		cmd := exec.Command(name, args...)
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		out, cerr := cmd.CombinedOutput()
		if cerr == nil {
			break
		}
		if time.Now().After(end) {
			return [32]byte{}, "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), cerr, bytes.TrimSpace(out))
		}
	}
	sum, err := regionSum(dev)
	if err != nil {
		return [32]byte{}, "", err
	}
	return sum, identOf(dev), nil
}

// regionSum is the sha256 of the disk's first plantBytes, read with
// O_DIRECT so that no page cache can hide what is on the device.
func regionSum(dev string) ([32]byte, error) {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, plantBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return [32]byte{}, err
	}
	defer unix.Munmap(buf)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return [32]byte{}, fmt.Errorf("reading %s: %w", dev, err)
	}
	return sha256.Sum256(buf), nil
}

// identOf is what blkid reads on dev, as "TYPE=.. UUID=.." or
// "PTTYPE=.. PTUUID=..", "" for nothing.
func identOf(dev string) string {
	out, err := exec.Command("blkid", "-p", "-o", "export", dev).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return ""
	}
	if err != nil {
		return fmt.Sprintf("blkid: %v: %s", err, bytes.TrimSpace(out))
	}
	kv := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			kv[k] = v
		}
	}
	var parts []string
	for _, k := range []string{"TYPE", "UUID", "PTTYPE", "PTUUID"} {
		if v := kv[k]; v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	return strings.Join(parts, " ")
}

// addPlant records a plant the actor wrote. A settled plant must read
// back as written; an unsettled one is decided by settle.
func (h *harness) addPlant(d *state.Disk, dev string, s plantSpec, sum [32]byte, ident, how, allowed string, settled bool) {
	h.t.Helper()
	if settled && ident != s.want() {
		h.fatalf("the actor's %s plant on %s (%s) reads back as %q right after it was written", s.kind, dev, how, ident)
	}
	h.act.n++
	p := &plant{n: h.act.n, disk: d.ID, dev: dev, spec: s, sum: sum, how: how, allowed: allowed, settled: settled}
	h.act.plants[d.ID] = p
	h.act.touched[d.ID] = true
	h.t.Logf("actor: %v", p)
}

// plantNow writes a plant onto a disk no driver call is acting on.
func (h *harness) plantNow(d *state.Disk, how, allowed string, settled bool) {
	h.t.Helper()
	dev := h.deviceOf(d)
	s := h.newSpec()
	h.act.touched[d.ID] = true
	sum, ident, err := writePlant(dev, s, 2*time.Second)
	if err != nil {
		h.fatalf("actor: planting %s on %s: %v", s.kind, dev, err)
	}
	h.addPlant(d, dev, s, sum, ident, how, allowed, settled)
	h.act.steps["plant "+s.kind+" ("+how+")"]++
}

// unplant removes a plant the way an operator would, with wipefs, once
// the disk holds no volume; the driver may free the disk at its next start.
func (h *harness) unplant(p *plant, why string) {
	h.t.Helper()
	for end := time.Now().Add(2 * time.Second); ; time.Sleep(3 * time.Millisecond) {
		out, err := exec.Command("wipefs", "--all", "--quiet", p.dev).CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(end) { // wipefs opens the device exclusively
			h.fatalf("actor: wipefs %s: %v: %s", p.dev, err, out)
		}
	}
	delete(h.act.plants, p.disk)
	h.act.touched[p.disk] = true
	h.t.Logf("actor: %v removed (%s)", p, why)
}

// bindNode bind-mounts the disk's device node onto a file in the harness
// directory, as the kubelet publishes a raw block volume.
func (h *harness) bindNode(d *state.Disk) {
	h.t.Helper()
	dev := h.deviceOf(d)
	h.act.n++
	path := filepath.Join(h.dir, "actor", fmt.Sprintf("bind-%d", h.act.n))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		h.fatalf("%v", err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		h.fatalf("%v", err)
	}
	if err := unix.Mount(dev, path, "", unix.MS_BIND, ""); err != nil {
		h.fatalf("actor: binding %s onto %s: %v", dev, path, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		h.fatalf("%v", err)
	}
	h.act.binds[d.ID] = &devBind{disk: d.ID, dev: dev, path: path, rdev: st.Rdev}
	h.act.touched[d.ID] = true
	h.act.steps["bind"]++
	h.t.Logf("actor: bound %s (disk %s) onto %s", dev, d.ID, path)
}

func (h *harness) unbindNode(b *devBind) {
	h.t.Helper()
	if err := unix.Unmount(b.path, 0); err != nil {
		h.fatalf("actor: unmounting its bind %s: %v", b.path, err)
	}
	os.Remove(b.path)
	delete(h.act.binds, b.disk)
	h.act.touched[b.disk] = true
	h.act.steps["unbind"]++
	h.t.Logf("actor: unbound %s from %s", b.dev, b.path)
}

// mountTmpfs mounts a tmpfs with a marker file at path.
func (h *harness) mountTmpfs(path string) {
	h.t.Helper()
	h.act.n++
	m := &actorMount{path: path, source: fmt.Sprintf("fault-actor-%d", h.act.n),
		marker: fmt.Sprintf("actor mount %d %x\n", h.act.n, h.rnd.Uint64())}
	if _, err := os.Lstat(path); os.IsNotExist(err) {
		m.madeDir = true
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		h.fatalf("%v", err)
	}
	if err := unix.Mount(m.source, path, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=1m"); err != nil {
		h.fatalf("actor: mounting a tmpfs at %s: %v", path, err)
	}
	if err := os.WriteFile(filepath.Join(path, markerName), []byte(m.marker), 0o644); err != nil {
		h.fatalf("%v", err)
	}
	h.act.mounts[path] = m
	h.act.steps["tmpfs"]++
	h.t.Logf("actor: tmpfs %s at %s", m.source, path)
}

func (h *harness) unmountTmpfs(m *actorMount) {
	h.t.Helper()
	if err := unix.Unmount(m.path, 0); err != nil {
		h.fatalf("actor: unmounting its tmpfs at %s: %v", m.path, err)
	}
	if m.madeDir {
		os.Remove(m.path)
	}
	delete(h.act.mounts, m.path)
	h.act.steps["untmpfs"]++
	h.t.Logf("actor: tmpfs %s removed from %s", m.source, m.path)
}

// actorDisks lists the disks of the record the actor may plant on or
// bind: those with the given statuses (free or excluded, not of a
// volume) that it does not already plant on (bind on, for binds).
func (h *harness) actorDisks(rec *state.Record, forBind bool, statuses ...state.Status) []*state.Disk {
	var out []*state.Disk
	for _, id := range slices.Sorted(maps.Keys(rec.Disks)) {
		d := rec.Disks[id]
		if !slices.Contains(statuses, d.Status) {
			continue
		}
		if (forBind && h.act.binds[id] != nil) || (!forBind && h.act.plants[id] != nil) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// pickDisk draws a disk to plant on (to bind, with forBind), mostly a
// free one, where the driver's belief and the device part; nil for none.
func (h *harness) pickDisk(rec *state.Record, forBind bool) *state.Disk {
	free := h.actorDisks(rec, forBind, state.Free)
	excluded := h.actorDisks(rec, forBind, state.Excluded)
	switch {
	case len(free) > 0 && (len(excluded) == 0 || h.rnd.IntN(5) != 0):
		return free[h.rnd.IntN(len(free))]
	case len(excluded) > 0:
		return excluded[h.rnd.IntN(len(excluded))]
	}
	return nil
}

// tmpfsPaths lists the paths the actor may mount a tmpfs at: the target
// of every volume not published, the staging path of every volume not
// staged (and of block volumes, whose staging path the driver never
// mounts), and both paths of volume names the CO will use next or used
// before. skip names a volume whose call was interrupted.
func (h *harness) tmpfsPaths(skip string) []string {
	var out []string
	add := func(p string) {
		if h.act.mounts[p] == nil {
			out = append(out, p)
		}
	}
	for _, v := range h.sortedVols() {
		if v.name == skip {
			continue
		}
		if !v.published {
			add(v.target(h.dir))
		}
		if !v.staged || v.block {
			add(v.staging(h.dir))
		}
	}
	for _, n := range []int{h.names + 1, h.names + 2, h.names - 1} {
		name := fmt.Sprintf("vol-%04d", n)
		if n < 1 || h.vols[name] != nil || name == skip {
			continue
		}
		other := &vol{name: name}
		add(other.target(h.dir))
		add(other.staging(h.dir))
	}
	return out
}

// actorStep is one act of the actor between two calls of the CO.
func (h *harness) actorStep() {
	h.t.Helper()
	rec := h.readState()
	var acts []func()
	room := h.act.holds() < h.actorLimit()
	if d := h.pickDisk(rec, false); room && d != nil {
		plantFree := func() { h.plantNow(d, string(d.Status), "", true) }
		acts = append(acts, plantFree, plantFree, plantFree)
	}
	if d := h.pickDisk(rec, true); room && d != nil {
		acts = append(acts, func() { h.bindNode(d) }, func() { h.bindNode(d) })
	}
	for _, id := range slices.Sorted(maps.Keys(h.act.plants)) {
		p := h.act.plants[id]
		if s := rec.Disks[id].Status; p.settled && (s == state.Free || s == state.Excluded) {
			acts = append(acts, func() { h.act.steps["unplant"]++; h.unplant(p, "the actor clears it") })
		}
	}
	for _, id := range slices.Sorted(maps.Keys(h.act.binds)) {
		b := h.act.binds[id]
		acts = append(acts, func() { h.unbindNode(b) })
	}
	if paths := h.tmpfsPaths(""); len(h.act.mounts) < 3 && len(paths) > 0 {
		p := paths[h.rnd.IntN(len(paths))]
		acts = append(acts, func() { h.mountTmpfs(p) }, func() { h.mountTmpfs(p) })
	}
	for _, p := range slices.Sorted(maps.Keys(h.act.mounts)) {
		m := h.act.mounts[p]
		acts = append(acts, func() { h.unmountTmpfs(m) }, func() { h.poke(m) })
	}
	if len(acts) == 0 {
		return
	}
	acts[h.rnd.IntN(len(acts))]()
}

// actorWhileDown may act while no driver runs (after a kill or a stop,
// before the start): the start must find what it did. It acts more often
// when a disk's cleaning was cut short, and then mostly plants on that
// disk: the resumed cleaner must leave the plant alone unless the deleted
// volume's record says the disk may hold anything of its own (a raw
// volume, a mkfs cut short).
func (h *harness) actorWhileDown(inflight string) {
	h.t.Helper()
	rec := h.readState()
	room := h.act.holds() < h.actorLimit()
	cleaning := len(h.actorDisks(rec, false, state.Cleaning)) > 0
	if (cleaning && room && h.rnd.IntN(4) == 0) || (!(cleaning && room) && h.rnd.IntN(3) != 0) {
		return
	}
	var acts []func()
	if ds := h.actorDisks(rec, false, state.Cleaning); room && len(ds) > 0 {
		d := ds[h.rnd.IntN(len(ds))]
		plantCleaning := func() {
			v := d.Volume
			protected := v != nil && !v.RawExposed && v.Format != state.FormatStarted
			name := ""
			if v != nil {
				name = v.Name
			}
			h.plantNow(d, "down cleaning", name, protected)
		}
		acts = append(acts, plantCleaning, plantCleaning, plantCleaning, plantCleaning)
	}
	if d := h.pickDisk(rec, false); room && d != nil {
		acts = append(acts, func() { h.plantNow(d, "down "+string(d.Status), "", true) })
	}
	if d := h.pickDisk(rec, true); room && d != nil {
		acts = append(acts, func() { h.bindNode(d) })
	}
	if paths := h.tmpfsPaths(inflight); len(h.act.mounts) < 3 && len(paths) > 0 {
		p := paths[h.rnd.IntN(len(paths))]
		acts = append(acts, func() { h.mountTmpfs(p) })
	}
	if len(acts) > 0 {
		h.act.steps["while the driver is down"]++
		acts[h.rnd.IntN(len(acts))]()
	}
}

// race is a plant written in a goroutine while a CreateVolume or a
// DeleteVolume (and its background wipe) runs.
type race struct {
	kind   string // "race create" or "race delete"
	first  bool   // the plant is written before the call is sent
	disk   *state.Disk
	dev    string
	spec   plantSpec
	v      *vol
	done   chan struct{}
	landed time.Time // when the plant was on the disk (at the latest)
	sum    [32]byte
	ident  string
	err    error
}

// startRace may start a plant racing call c: for a create, onto the free
// disk the driver would most likely pick (or another free one), now and
// then written completely before the call is sent; for a delete, onto the
// volume's disk after a random delay, while it is being cleaned. It
// returns nil when it does not race.
func (h *harness) startRace(c call) *race {
	if (c.kind != "create" && c.kind != "delete") || h.rnd.IntN(4) != 0 || h.act.holds() >= h.actorLimit() {
		return nil
	}
	rec := h.readState()
	var target *state.Disk
	if c.kind == "create" {
		var free []*state.Disk
		for _, d := range h.actorDisks(rec, false, state.Free) {
			if h.act.binds[d.ID] == nil {
				free = append(free, d)
			}
		}
		if len(free) == 0 {
			return nil
		}
		// The driver's choice: smallest, then (for a block volume) one
		// without an earlier volume's bytes, then the lowest ID.
		slices.SortFunc(free, func(a, b *state.Disk) int {
			if a.SizeBytes != b.SizeBytes {
				return int(a.SizeBytes - b.SizeBytes)
			}
			if a.Residual != b.Residual {
				if a.Residual == c.v.block {
					return 1
				}
				return -1
			}
			return strings.Compare(a.ID, b.ID)
		})
		target = free[0]
		if h.rnd.IntN(4) == 0 {
			target = free[h.rnd.IntN(len(free))]
		}
	} else {
		for _, d := range rec.Disks {
			if d.Status == state.Allocated && d.Volume != nil && d.Volume.ID == c.v.id && h.act.plants[d.ID] == nil && h.act.binds[d.ID] == nil {
				target = d
			}
		}
		if target == nil {
			return nil
		}
	}
	r := &race{kind: "race " + c.kind, disk: target, dev: h.deviceOf(target), spec: h.newSpec(), v: c.v, done: make(chan struct{})}
	delay := time.Duration(h.rnd.IntN(25000)) * time.Microsecond
	if c.kind == "delete" {
		delay = time.Duration(h.rnd.IntN(60000)) * time.Microsecond
	}
	h.act.touched[target.ID] = true
	write := func() {
		defer close(r.done)
		time.Sleep(delay)
		r.sum, r.ident, r.err = writePlant(r.dev, r.spec, 3*time.Second)
		r.landed = time.Now()
	}
	if c.kind == "create" && h.rnd.IntN(3) == 0 {
		r.first = true
		h.act.steps["plant, then create"]++
		write()
		return r
	}
	h.act.steps[r.kind]++
	go write()
	return r
}

// finishRace waits for the racing plant and records it. A plant racing a
// create is settled at once (allocating writes nothing); the volume may
// hold the disk only if the plant landed after the call was sent (sent):
// the driver may have checked the disk before. A plant racing a delete
// may be wiped by the cleaner it raced, and is settled after the
// cleaning.
func (h *harness) finishRace(r *race, sent time.Time) {
	h.t.Helper()
	<-r.done
	if r.err != nil {
		h.act.steps[r.kind+": plant not written"]++
		h.t.Logf("actor: %s plant on %s not written: %v", r.kind, r.dev, r.err)
		if r.kind == "race create" {
			return // the tool never opened the device: only zeroes were written
		}
		// Whatever part of it was written is settled (cleared) below.
	}
	allowed, how := r.v.name, r.kind
	if r.kind == "race create" && (r.first || r.landed.Before(sent)) {
		allowed = "" // on the disk before the driver could look: never allocated
		if r.first {
			how = "plant, then create"
		}
	}
	h.addPlant(r.disk, r.dev, r.spec, r.sum, r.ident, how, allowed, r.kind == "race create")
}

// afterRace settles what a race left once the call and its retries are
// over: a created volume that got the planted disk can never be staged or
// published (spoiled); a plant that raced a wipe is kept or lost.
func (h *harness) afterRace(r *race) {
	h.t.Helper()
	p := h.act.plants[r.disk.ID]
	if p == nil || p.how != r.kind {
		return
	}
	if r.kind == "race create" && p.allowed != "" {
		d := h.readState().Disks[p.disk]
		if d.Status == state.Allocated && d.Volume.Name == r.v.name && h.vols[r.v.name] == r.v {
			r.v.spoiled = true
			h.act.steps["race create: volume got the planted disk"]++
			h.t.Logf("actor: volume %s got disk %s before the plant landed; it must never be staged", r.v.name, p.disk)
		} else {
			p.allowed = ""
			h.act.steps["race create: planted disk not allocated"]++
		}
	}
}

// settle decides every plant that raced a wipe, once no disk is being
// cleaned: intact ones are settled, the others were taken by a wipe the
// driver was entitled to and are cleared by the actor. A cleanup that
// failed because the plant landed in the middle of it is retried by a
// restart, as an operator would, instead of waiting for the driver's
// retry interval. A plant that raced the delete of volume retrying, which
// a kill interrupted, stays undecided: the retried delete is the same
// delete, entitled to wipe what the first one was.
func (h *harness) settle(retrying string) {
	h.t.Helper()
	pending := false
	for _, p := range h.act.plants {
		pending = pending || (!p.settled && !p.racing(retrying))
	}
	if !pending {
		return
	}
	for attempt := 0; ; attempt++ {
		h.waitNoCleaning()
		failed := 0
		for id, d := range h.readState().Disks {
			if d.Status == state.Failed && h.act.unsettled(id) {
				failed++
			}
		}
		if failed == 0 {
			break
		}
		if attempt >= 3 {
			h.fatalf("%d disks still failed after %d restarts", failed, attempt)
		}
		h.act.steps["restart after a cleanup failed by a race"]++
		h.ops["graceful restart"]++
		if err := h.drv.stop(); err != nil {
			h.fatalf("%v", err)
		}
		h.restart("")
	}
	rec := h.readState()
	for _, id := range slices.Sorted(maps.Keys(h.act.plants)) {
		p := h.act.plants[id]
		if p.settled || p.racing(retrying) {
			continue
		}
		sum, err := regionSum(p.dev)
		if err != nil {
			h.fatalf("%v", err)
		}
		if ident := identOf(p.dev); sum == p.sum && ident == p.spec.want() {
			p.settled = true
			h.act.steps[p.how+": plant kept"]++
			continue
		}
		h.act.steps[p.how+": plant taken by the wipe it raced"]++
		if s := rec.Disks[id].Status; s != state.Free && s != state.Excluded {
			h.fatalf("%v lost, and its disk is %s", p, s)
		}
		h.unplant(p, "a wipe the driver was entitled to took it")
	}
}

// racing says whether the plant raced the delete of volume v ("" for
// none).
func (p *plant) racing(v string) bool {
	return v != "" && p.how == "race delete" && p.allowed == v
}

// waitNoCleaning waits until the state shows no disk being cleaned. A
// driver found dead meanwhile (the armed crash point hit in the cleaner's
// state write, after its call returned) is restarted, and the cleaning
// resumes.
func (h *harness) waitNoCleaning() {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		h.reviveIfDead()
		n := 0
		for _, d := range h.readState().Disks {
			if d.Status == state.Cleaning {
				n++
			}
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.fatalf("%d disks still cleaning after 60s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pokeCall sends NodeUnpublish or NodeUnstage and returns the answer's code.
func (h *harness) pokeCall(kind, id, path string) codes.Code {
	ctx, cancel := context.WithTimeout(context.Background(), callTime)
	defer cancel()
	var err error
	if kind == "unpublish" {
		_, err = h.drv.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: path})
	} else {
		_, err = h.drv.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: path})
	}
	return status.Code(err)
}

// reviveIfDead restarts a driver that the armed crash point killed in a
// background state write (a cleaner's) after its call had returned.
func (h *harness) reviveIfDead() {
	h.t.Helper()
	if !h.drv.dead() {
		return
	}
	if strings.Contains(tail(h.drv.log), "panic") {
		h.fatalf("the driver panicked")
	}
	h.kills["crash point "+h.armed]++
	os.Remove(h.crashFile())
	h.restart("")
}

// poke sends NodeUnpublish or NodeUnstage for the path of an actor's
// tmpfs: with the ID of a volume of this node the answer must be
// FAILED_PRECONDITION, with an ID naming no volume here NOT_FOUND, and
// the tmpfs stays either way (checked after the step). Now and then it
// sends one for a path where nothing is mounted instead: OK, whatever
// the ID.
func (h *harness) poke(m *actorMount) {
	h.t.Helper()
	var ids []string
	for _, v := range h.sortedVols() {
		if v.id != "" && !v.deleting {
			ids = append(ids, v.id)
		}
	}
	want := codes.FailedPrecondition
	id := ""
	switch r := h.rnd.IntN(3); {
	case r == 0 && len(ids) > 0:
		id = ids[h.rnd.IntN(len(ids))]
	case r == 1 && len(h.act.deleted) > 0:
		id, want = h.act.deleted[h.rnd.IntN(len(h.act.deleted))], codes.NotFound
	default:
		disks := slices.Sorted(maps.Keys(h.readState().Disks))
		id, want = fmt.Sprintf("ld:%s:%s:%012x", nodeID, disks[h.rnd.IntN(len(disks))], h.rnd.Uint64()&(1<<48-1)), codes.NotFound
	}
	kind := []string{"unpublish", "unstage"}[h.rnd.IntN(2)]
	path, what := m.path, "where the actor's tmpfs "+m.source+" is mounted"
	if h.rnd.IntN(4) == 0 {
		h.act.n++
		path, what, want = filepath.Join(h.dir, "pods", fmt.Sprintf("gone-%d", h.act.n), "target"), "where nothing is mounted", codes.OK
	}
	got := h.pokeCall(kind, id, path)
	if got == codes.Unavailable {
		// The armed crash point killed the driver in a background state
		// write (a cleaner's) before or during the call: restart, send again.
		select {
		case <-h.drv.exited:
		case <-time.After(5 * time.Second):
		}
		h.reviveIfDead()
		got = h.pokeCall(kind, id, path)
	}
	if want == codes.OK {
		h.act.steps["poke "+kind+" unmounted path "+got.String()]++
	} else {
		h.act.steps["poke "+kind+" "+got.String()]++
	}
	if got != want {
		h.fatalf("Node%s of %s at %s, %s: got %v, want %v", strings.ToUpper(kind[:1])+kind[1:], id, path, what, got, want)
	}
}

// checkActor checks the actor's invariants against the record rec: no
// plant's disk was given to a volume it may not hold or mounted by the
// driver, every settled plant is intact byte for byte (and, when full, as
// blkid reads it), every bind and tmpfs is still there with its marker,
// and every excluded disk is one the actor touched since the last start.
func (h *harness) checkActor(rec *state.Record, full bool) {
	h.t.Helper()
	infos := h.mountInfos()
	for _, id := range slices.Sorted(maps.Keys(h.act.plants)) {
		p := h.act.plants[id]
		d := rec.Disks[id]
		if d == nil {
			h.fatalf("%v: the disk is gone from the state", p)
		}
		if (d.Status == state.Allocated || d.Status == state.Cleaning) && (d.Volume == nil || d.Volume.Name != p.allowed) {
			h.fatalf("%v: the disk is %s to volume %s, created after the plant", p, d.Status, volumeName(d))
		}
		if p.settled {
			sum, err := regionSum(p.dev)
			if err != nil {
				h.fatalf("%v", err)
			}
			if sum != p.sum {
				h.fatalf("%v was changed (sha256 of the first %d bytes %x, planted %x; blkid now %q); disk status %s: the driver erased or overwrote content it did not create",
					p, plantBytes, sum[:8], p.sum[:8], identOf(p.dev), d.Status)
			}
			if full {
				if got := identOf(p.dev); got != p.spec.want() {
					h.fatalf("%v reads back as %q", p, got)
				}
			}
		}
		h.checkNotUsedByDriver(infos, p.dev, fmt.Sprint(p))
	}
	for _, id := range slices.Sorted(maps.Keys(h.act.binds)) {
		b := h.act.binds[id]
		d := rec.Disks[id]
		if d == nil {
			h.fatalf("disk %s, bound by the actor at %s, is gone from the state", id, b.path)
		}
		if d.Status == state.Allocated || d.Status == state.Cleaning {
			h.fatalf("disk %s (%s) is %s to volume %s while the actor has its device node bound at %s", id, b.dev, d.Status, volumeName(d), b.path)
		}
		found := false
		for _, mi := range infos {
			found = found || mi.MountPoint == b.path
		}
		var st unix.Stat_t
		if err := unix.Stat(b.path, &st); !found || err != nil || st.Rdev != b.rdev {
			h.fatalf("the actor's bind of %s at %s is gone (mounted %v, stat %v)", b.dev, b.path, found, err)
		}
		h.checkNotUsedByDriver(infos, b.dev, "disk "+id+" bound by the actor")
	}
	for _, path := range slices.Sorted(maps.Keys(h.act.mounts)) {
		m := h.act.mounts[path]
		found := false
		for _, mi := range infos {
			found = found || (mi.MountPoint == path && mi.FsType == "tmpfs" && mi.Source == m.source)
		}
		if !found {
			h.fatalf("the actor's tmpfs %s at %s was unmounted", m.source, path)
		}
		if b, err := os.ReadFile(filepath.Join(path, markerName)); err != nil || string(b) != m.marker {
			h.fatalf("the marker of the actor's tmpfs %s at %s is gone or changed (%v): something was mounted over it or it was emptied", m.source, path, err)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(rec.Disks)) {
		if d := rec.Disks[id]; d.Status == state.Excluded && !h.act.touched[id] {
			h.fatalf("disk %s is excluded (%s) though the actor did not touch it since the driver started", id, d.Reason)
		}
	}
}

// checkStarted runs right after a start: every disk carrying a settled
// plant or bound by the actor was found so and excluded (unless its
// volume holds it); every other disk the actor touched is free again.
func (h *harness) checkStarted() {
	h.t.Helper()
	rec := h.readState()
	for id, d := range rec.Disks {
		p, b := h.act.plants[id], h.act.binds[id]
		if d.Status == state.Free && ((p != nil && p.settled) || b != nil) {
			h.fatalf("after a start disk %s is free though the actor has %s on it", id, describe(p, b))
		}
	}
}

func describe(p *plant, b *devBind) string {
	var s []string
	if p != nil {
		s = append(s, p.String())
	}
	if b != nil {
		s = append(s, "a bind of its device node at "+b.path)
	}
	return strings.Join(s, " and ")
}

// checkNotUsedByDriver fails when dev is mounted, or its device node bound
// anywhere but at the actor's own bind.
func (h *harness) checkNotUsedByDriver(infos []mount.MountInfo, dev, what string) {
	h.t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		h.fatalf("%v", err)
	}
	maj, min := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	for _, mi := range infos {
		if uint32(mi.Major) == maj && uint32(mi.Minor) == min {
			h.fatalf("%s: %s is mounted at %s", what, dev, mi.MountPoint)
		}
		if mi.FsType == "devtmpfs" && mi.Root == "/"+filepath.Base(dev) && !h.isActorBind(mi.MountPoint) {
			h.fatalf("%s: the device node %s is bound at %s", what, dev, mi.MountPoint)
		}
	}
}

func (h *harness) isActorBind(path string) bool {
	for _, b := range h.act.binds {
		if b.path == path {
			return true
		}
	}
	return false
}

// isActorMount says whether a mount is one of the actor's.
func (h *harness) isActorMount(mi mount.MountInfo) bool {
	if m := h.act.mounts[mi.MountPoint]; m != nil && mi.Source == m.source && mi.FsType == "tmpfs" {
		return true
	}
	return h.isActorBind(mi.MountPoint)
}

func volumeName(d *state.Disk) string {
	if d.Volume == nil {
		return "(none)"
	}
	return fmt.Sprintf("%s (%s)", d.Volume.Name, d.Volume.ID)
}

// leave removes the actor's mounts and binds, keeping its plants: the end
// of the run checks that the disks carrying them are excluded and intact.
func (h *harness) actorLeave() {
	h.t.Helper()
	for _, p := range slices.Sorted(maps.Keys(h.act.mounts)) {
		h.unmountTmpfs(h.act.mounts[p])
	}
	for _, id := range slices.Sorted(maps.Keys(h.act.binds)) {
		h.unbindNode(h.act.binds[id])
	}
}

// actorCleanup undoes whatever the actor left, even after a failure: the
// mounts go with the harness's cleanup, the plants are wiped here.
func (h *harness) actorCleanup() {
	for _, p := range h.act.plants {
		_ = exec.Command("wipefs", "--all", "--quiet", p.dev).Run()
	}
	for _, b := range h.act.binds {
		_ = unix.Unmount(b.path, 0)
		os.Remove(b.path)
	}
	for _, m := range h.act.mounts {
		_ = unix.Unmount(m.path, 0)
	}
}
