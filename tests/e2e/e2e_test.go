package e2e

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

var ssd = cluster.DiskSpec{SizeBytes: gib}

// TestStatefulSetExample (scenario a): the example StatefulSet on one real
// node with two SSDs and one kubelet-less node with one, so that its three
// replicas must use both nodes. Every claim is bound to a PV pinned to its
// pod's node; on the real node the pods run with the class's mkfsOptions and
// mountOptions in effect, write, are deleted, come back on the same node and
// read their data.
func TestStatefulSetExample(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	// The example claims 100Gi: sparse loop files of 101GiB.
	big := cluster.DiskSpec{SizeBytes: 101 * gib}
	e := startCluster(ctx, t, topology{real: disks(2, big), fake: [][]cluster.DiskSpec{{big}}})
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	e.applyExample(ctx, "../../examples/statefulset/statefulset.yaml", func(kind string, obj map[string]any) {
		hostNetwork(kind, obj)
		// One replica lands on a kubelet-less node, whose pod never
		// becomes Ready; OrderedReady would wait for it.
		obj["spec"].(map[string]any)["podManagementPolicy"] = "Parallel"
	})
	const app = "localdisk-demo"
	var c claims
	e.waitFor(ctx, "3 claims bound, real-node pods running", func() error {
		c = e.claimsOf(ctx, app)
		onReal := 0
		for _, p := range c.pods {
			if p.Spec.NodeName == e.real.Name && p.running() {
				onReal++
			}
		}
		if len(c.bound) != 3 || c.scheduled != 3 || onReal != 2 {
			return fmt.Errorf("%d bound, %d scheduled, %d running on %s", len(c.bound), c.scheduled, onReal, e.real.Name)
		}
		return nil
	})
	e.checkPlacement(c)

	for name, p := range c.pods {
		if p.Spec.NodeName != e.real.Name {
			continue
		}
		mounts, err := e.cp.Exec(ctx, "default", name, "cat", "/proc/mounts")
		if err != nil {
			t.Fatal(err)
		}
		var line string
		for _, l := range strings.Split(mounts, "\n") {
			if f := strings.Fields(l); len(f) > 3 && f[1] == "/data" {
				line = l
			}
		}
		f := strings.Fields(line)
		if len(f) < 4 || f[2] != "ext4" || !strings.Contains(","+f[3]+",", ",noatime,") {
			t.Errorf("%s: /data is not ext4 mounted noatime (the class's mountOptions): %q", name, line)
		}
		// mkfsOptions "-m 0": no blocks reserved for root. Free minus
		// available is then only ext4's own delayed-allocation reserve
		// (at most 4096 blocks); the default -m 5 would hold back 5%.
		st, err := e.cp.Exec(ctx, "default", name, "stat", "-f", "-c", "%b %f %a", "/data")
		if err != nil {
			t.Fatal(err)
		}
		var total, free, avail int64
		if _, err := fmt.Sscan(st, &total, &free, &avail); err != nil {
			t.Fatalf("%s: stat -f: %q: %v", name, st, err)
		}
		if reserved := free - avail; reserved > 4096 || total < 90*gib/4096 {
			t.Errorf("%s: %d of %d blocks reserved: mkfsOptions -m 0 not applied", name, reserved, total)
		}
		if _, err := e.cp.Exec(ctx, "default", name, "sh", "-c", "echo payload-of-"+name+" > /data/payload && sync"); err != nil {
			t.Fatal(err)
		}
		e.kubectl(ctx, "", "delete", "pod", "-n", "default", name)
		e.waitFor(ctx, name+" back and running", func() error {
			q := e.get(ctx, "pod", "-n", "default", name)
			if q.Metadata.UID == p.Metadata.UID || !q.running() {
				return fmt.Errorf("not yet back")
			}
			if q.Spec.NodeName != p.Spec.NodeName {
				t.Fatalf("%s came back on %s, its disk is on %s", name, q.Spec.NodeName, p.Spec.NodeName)
			}
			return nil
		})
		got, err := e.cp.Exec(ctx, "default", name, "cat", "/data/payload", "/data/starts")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(got), "\n")
		if lines[0] != "payload-of-"+name || len(lines) != 3 {
			t.Errorf("%s after its restart reads %q; want its payload and two starts", name, got)
		}
	}
}

// TestPlacementByCapacity (scenario b): with K free SSDs in the cluster,
// K+2 replicas of the SSD class give exactly K bound claims, each disk used
// once, and 2 pods Pending because no node had enough free storage. Every
// node also has an HDD, so its volume limit (max_volumes_per_node, the
// disk count, the second guard) is not what stops them: the capacity is. Deleting one claim gets
// its disk cleaned, the node's CSIStorageCapacity rises, and a Pending pod
// is placed.
func TestPlacementByCapacity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const nodes, perNode = 3, 2
	k := nodes * perNode
	hdd := cluster.DiskSpec{SizeBytes: gib, HDD: true}
	node := append(disks(perNode, ssd), hdd)
	e := startCluster(ctx, t, topology{fake: [][]cluster.DiskSpec{node, node, node}})
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	e.apply(ctx, statefulSet("cap", "localdisk-ssd", k+2, "512Mi"))

	var c claims
	e.waitFor(ctx, "K claims bound and 2 pods unschedulable for storage", func() error {
		c = e.claimsOf(ctx, "cap")
		short := e.notEnoughStorage(ctx)
		if len(c.bound) < k || c.scheduled < k || len(short) < 2 {
			return fmt.Errorf("%d of %d bound, %d scheduled, pods short of storage: %v; scheduler said: %q", len(c.bound), k, c.scheduled, short, e.schedulingFailures(ctx))
		}
		return nil
	})
	// A second look after a capacity poll: nothing more may bind.
	time.Sleep(6 * time.Second)
	c = e.claimsOf(ctx, "cap")
	e.checkPlacement(c)
	if len(c.bound) != k || c.scheduled != k {
		t.Fatalf("%d claims bound and %d pods scheduled; want exactly %d", len(c.bound), c.scheduled, k)
	}
	for _, n := range e.fakes {
		if got := e.capacity(ctx, n.Name); got != 0 {
			t.Errorf("%s reports %d bytes free with all its disks in use", n.Name, got)
		}
	}

	// Give up one claim of a scheduled pod (with Parallel pod management
	// any ordinal may be among the Pending ones): its pod is on a
	// kubelet-less node, so it is force-deleted for the claim to go.
	var victim string
	for _, name := range slices.Sorted(maps.Keys(c.pods)) {
		if c.pods[name].Spec.NodeName != "" {
			victim = name
			break
		}
	}
	host := e.fakeNode(c.pods[victim].Spec.NodeName)
	marker := []byte("data the driver must wipe only on its own disk")
	for _, loop := range host.Loops[:perNode] {
		writeAt(t, loop, marker)
	}
	seen := e.watchCapacity(ctx, host.Name)
	// The StatefulSet goes first, its pods orphaned (pending ones stay in
	// the scheduler's queue): it would otherwise recreate the victim at
	// once, which keeps the claim in use.
	e.kubectl(ctx, "", "delete", "statefulset", "-n", "default", "cap", "--cascade=orphan")
	e.kubectl(ctx, "", "delete", "pvc", "-n", "default", "data-"+victim, "--wait=false")
	e.forceDeletePods(ctx, victim)
	e.waitFor(ctx, host.Name+" capacity rises after the delete", func() error {
		// A pending pod may take the disk within the same poll interval:
		// every value the object took counts.
		for _, v := range seen() {
			if v >= gib-4<<20 {
				return nil
			}
		}
		return fmt.Errorf("capacity values seen: %v", seen())
	})
	wiped := 0
	for _, loop := range host.Loops[:perNode] {
		if !bytes.Equal(readAt(t, loop, len(marker)), marker) {
			wiped++
		}
	}
	if wiped != 1 {
		t.Errorf("%d SSDs of %s lost the marker; want exactly the deleted volume's", wiped, host.Name)
	}
	e.waitFor(ctx, "a pending pod placed on the freed disk", func() error {
		c = e.claimsOf(ctx, "cap")
		if len(c.bound) != k || c.scheduled != k || len(c.pods) != k+1 {
			return fmt.Errorf("%d bound, %d scheduled", len(c.bound), c.scheduled)
		}
		return nil
	})
	e.checkPlacement(c)
}

// TestBurst (scenario c): a StatefulSet scaled from 0 to K at once, K the
// number of free SSDs, with a 1s capacity poll: all K claims bound within a
// bound, no disk given twice. Four nodes have one SSD and three HDDs (their
// volume limit of 4 does not stop a second SSD claim), one has four SSDs:
// the scheduler, working from capacity that is up to a poll old, sends
// more than one pod to a one-SSD node; the driver answers the loser with
// RESOURCE_EXHAUSTED, the provisioner gives the claim back to the
// scheduler, and the pod lands on a node with a disk left.
func TestBurst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	hdd := cluster.DiskSpec{SizeBytes: gib, HDD: true}
	topo := topology{poll: time.Second, fake: [][]cluster.DiskSpec{disks(4, ssd)}}
	for i := 0; i < 4; i++ {
		topo.fake = append(topo.fake, append([]cluster.DiskSpec{ssd}, disks(3, hdd)...))
	}
	k := 8
	e := startCluster(ctx, t, topo)
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	e.apply(ctx, statefulSet("burst", "localdisk-ssd", 0, "512Mi"))
	start := time.Now()
	e.kubectl(ctx, "", "scale", "statefulset", "-n", "default", "burst", "--replicas="+strconv.Itoa(k))
	bctx, bcancel := context.WithTimeout(ctx, 90*time.Second)
	defer bcancel()
	var c claims
	e.waitFor(bctx, "all K claims bound and pods scheduled", func() error {
		c = e.claimsOf(ctx, "burst")
		if len(c.bound) != k || c.scheduled != k {
			return fmt.Errorf("%d bound, %d scheduled of %d", len(c.bound), c.scheduled, k)
		}
		return nil
	})
	took := time.Since(start)
	e.checkPlacement(c)
	perNode := map[string]int{}
	for _, pv := range c.bound {
		perNode[pv.node()]++
	}
	for n, count := range perNode {
		if max := map[bool]int{true: 4, false: 1}[n == "fake-0"]; count > max {
			t.Errorf("%s holds %d SSD volumes on %d SSDs", n, count, max)
		}
	}
	exhausted := 0
	for _, n := range e.fakes {
		b, _ := os.ReadFile(n.Log("csi-provisioner"))
		exhausted += strings.Count(string(b), "Volume rescheduled because")
	}
	t.Logf("%d claims bound in %v; %d provisioning attempts met RESOURCE_EXHAUSTED and were rescheduled", k, took.Round(time.Millisecond), exhausted)
	if exhausted == 0 {
		t.Errorf("no claim went the RESOURCE_EXHAUSTED way: the race this test is about did not happen")
	}
}

// TestRawBlock (scenario d): the example block-mode pod on the real node
// writes and reads its whole disk through volumeDevices; the bytes are on
// the node's loop device.
func TestRawBlock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := startCluster(ctx, t, topology{real: []cluster.DiskSpec{{SizeBytes: 101 * gib}}})
	e.apply(ctx, "../../examples/storageclasses/raw-block.yaml")
	e.applyExample(ctx, "../../examples/block-pod/pod.yaml", func(kind string, obj map[string]any) { hostNetwork(kind, obj) })
	e.waitFor(ctx, "raw-disk-user running", func() error {
		if p := e.get(ctx, "pod", "-n", "default", "raw-disk-user"); !p.running() {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		return nil
	})
	payload := "written-through-volumeDevices"
	out, err := e.cp.Exec(ctx, "default", "raw-disk-user", "sh", "-c",
		"test -b /dev/xvda && printf "+payload+" | dd of=/dev/xvda bs=4096 conv=sync,fsync 2>/dev/null && dd if=/dev/xvda bs=4096 count=1 2>/dev/null | head -c "+strconv.Itoa(len(payload)))
	if err != nil {
		t.Fatal(err)
	}
	if out != payload {
		t.Errorf("pod read back %q, want %q", out, payload)
	}
	if got := readAt(t, e.real.Loops[0], len(payload)); string(got) != payload {
		t.Errorf("the node's disk holds %q, want %q", got, payload)
	}
}

// TestClassSelectsDisks (scenario e): on nodes whose disks the driver finds
// through the ECS source, with SSD and HDD categories mixed, the example
// HDD class (diskCategory local_hdd_pro) only gets HDDs and the SSD class
// (media ssd) only SSDs; the third HDD claim stays Pending, no SSD given.
func TestClassSelectsDisks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := cluster.DiskSpec{SizeBytes: 2 * gib, Category: "local_ssd_pro"}
	h := cluster.DiskSpec{SizeBytes: 2 * gib, Category: "local_hdd_pro", HDD: true}
	e := startCluster(ctx, t, topology{fake: [][]cluster.DiskSpec{{s, h}, {s, h}, {s, s}}})
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	e.apply(ctx, "../../examples/storageclasses/hdd-xfs.yaml")
	e.apply(ctx, statefulSet("hdd", "localdisk-hdd-xfs", 3, "1Gi"))
	e.apply(ctx, statefulSet("ssd", "localdisk-ssd", 3, "1Gi"))
	var hdd, ssdc claims
	e.waitFor(ctx, "2 HDD and 3 SSD claims bound, 1 HDD pod short of storage", func() error {
		hdd, ssdc = e.claimsOf(ctx, "hdd"), e.claimsOf(ctx, "ssd")
		short := e.notEnoughStorage(ctx)
		if len(hdd.bound) != 2 || len(ssdc.bound) != 3 || len(short) != 1 || !strings.HasPrefix(short[0], "hdd-") {
			return fmt.Errorf("%d HDD bound, %d SSD bound, short of storage: %v", len(hdd.bound), len(ssdc.bound), short)
		}
		return nil
	})
	e.checkPlacement(hdd)
	e.checkPlacement(ssdc)
	for want, c := range map[string]claims{"local_hdd_pro": hdd, "local_ssd_pro": ssdc} {
		for claim, pv := range c.bound {
			attrs := pv.Spec.CSI.VolumeAttributes
			if got := category(attrs["ecsDiskId"]); got != want {
				t.Errorf("%s got ECS disk %q of category %q, want %s", claim, attrs["ecsDiskId"], got, want)
			}
		}
	}
}

// category is the category the suite gave a fake ECS disk "d-<node>-<i>".
func category(ecsID string) string {
	m := regexp.MustCompile(`^d-fake-(\d)-(\d)$`).FindStringSubmatch(ecsID)
	if m == nil {
		return ""
	}
	if m[1] != "2" && m[2] == "1" {
		return "local_hdd_pro"
	}
	return "local_ssd_pro"
}

// schedulingFailures is what the scheduler's FailedScheduling events say.
func (e *env) schedulingFailures(ctx context.Context) []string {
	var msgs []string
	for _, ev := range e.list(ctx, "events", "-n", "default", "--field-selector", "reason=FailedScheduling") {
		msgs = append(msgs, ev.InvolvedObject.Name+": "+ev.Message)
	}
	return msgs
}

// watchCapacity records every capacity value the node's CSIStorageCapacity
// objects take from now on; the watch ends with the test.
func (e *env) watchCapacity(ctx context.Context, node string) func() []int64 {
	e.t.Helper()
	lines := e.watch(ctx, "csistoragecapacities", "-n", e.cp.Namespace, "-o",
		`jsonpath={.nodeTopology.matchLabels.topology\.localdisk\.csi\.alibabacloud\.com/node}{" "}{.capacity}{"\n"}`)
	return func() []int64 {
		var values []int64
		for _, l := range lines() {
			f := strings.Fields(l.text)
			if len(f) != 2 || f[0] != node {
				continue
			}
			if v, err := parseQuantity(f[1]); err == nil {
				values = append(values, v)
			}
		}
		return values
	}
}

// notEnoughStorage lists the pods the scheduler reported as fitting no node
// for lack of free storage.
func (e *env) notEnoughStorage(ctx context.Context) []string {
	seen := map[string]bool{}
	var pods []string
	for _, ev := range e.list(ctx, "events", "-n", "default", "--field-selector", "reason=FailedScheduling") {
		if strings.Contains(ev.Message, "did not have enough free storage") && !seen[ev.InvolvedObject.Name] {
			seen[ev.InvolvedObject.Name] = true
			pods = append(pods, ev.InvolvedObject.Name)
		}
	}
	// Only those still unscheduled count.
	var still []string
	for _, p := range pods {
		out, err := e.cp.Kubectl(ctx, "", "get", "pod", "-n", "default", p, "-o", "jsonpath={.spec.nodeName}")
		if err == nil && out == "" {
			still = append(still, p)
		}
	}
	return still
}

// capacity is the free space a node's CSIStorageCapacity objects report,
// the largest over its classes.
func (e *env) capacity(ctx context.Context, node string) int64 {
	e.t.Helper()
	var best int64 = -1
	for _, c := range e.list(ctx, "csistoragecapacities", "-n", e.cp.Namespace) {
		if c.NodeTopology.MatchLabels[cluster.TopologyKey] != node {
			continue
		}
		out := e.kubectl(ctx, "", "get", "csistoragecapacity", "-n", e.cp.Namespace, c.Metadata.Name, "-o", "jsonpath={.capacity}")
		v, err := parseQuantity(out)
		if err != nil {
			e.t.Fatal(err)
		}
		best = max(best, v)
	}
	return best
}

func parseQuantity(q string) (int64, error) {
	units := map[string]int64{"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 1e3, "M": 1e6, "G": 1e9}
	m := regexp.MustCompile(`^(\d+)([A-Za-z]*)$`).FindStringSubmatch(strings.TrimSpace(q))
	if m == nil || units[m[2]] == 0 {
		return 0, fmt.Errorf("quantity %q", q)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	return n * units[m[2]], err
}

func (e *env) fakeNode(name string) *cluster.Node {
	for _, n := range e.fakes {
		if n.Name == name {
			return n
		}
	}
	e.t.Fatalf("no fake node %q", name)
	return nil
}

func writeAt(t *testing.T, dev string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, dev string, n int) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}
