package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

// localDisk is the part of a LocalDisk the tests read.
type localDisk struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Node     string `json:"node"`
		DiskID   string `json:"diskID"`
		Cordoned bool   `json:"cordoned"`
		Damaged  string `json:"damaged"`
	} `json:"spec"`
	Status struct {
		Phase       string `json:"phase"`
		Cordoned    bool   `json:"cordoned"`
		Device      string `json:"device"`
		Claim       string `json:"claim"`
		Reason      string `json:"reason"`
		CloudDiskID string `json:"cloudDiskID"`
		Volume      *struct {
			PersistentVolume string `json:"persistentVolume"`
			Lost             string `json:"lost"`
		} `json:"volume"`
		Cleanup *struct {
			Policy   string `json:"policy"`
			Progress string `json:"progress"`
		} `json:"cleanup"`
	} `json:"status"`
}

// localDisks lists every LocalDisk.
func (e *env) localDisks(ctx context.Context) []localDisk {
	e.t.Helper()
	var list struct {
		Items []localDisk `json:"items"`
	}
	if err := json.Unmarshal([]byte(e.kubectl(ctx, "", "get", "localdisks", "-o", "json")), &list); err != nil {
		e.t.Fatal(err)
	}
	return list.Items
}

// diskOn is the LocalDisk of the node's device.
func (e *env) diskOn(ctx context.Context, node, device string) (localDisk, bool) {
	for _, d := range e.localDisks(ctx) {
		if d.Spec.Node == node && d.Status.Device == device {
			return d, true
		}
	}
	return localDisk{}, false
}

// diskOfClaim is the LocalDisk whose volume is the claim's.
func (e *env) diskOfClaim(ctx context.Context, claim string) (localDisk, bool) {
	for _, d := range e.localDisks(ctx) {
		if d.Status.Claim == "default/"+claim {
			return d, true
		}
	}
	return localDisk{}, false
}

// scrape reads the node driver's metrics: each sample line's value by its
// name and labels as printed.
func scrape(ctx context.Context, t *testing.T, n *cluster.Node) map[string]float64 {
	t.Helper()
	url, err := n.MetricsURL()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err == nil {
			out[l[:i]] = v
		}
	}
	return out
}

// sumMetric adds the samples of name whose labels include every one of
// labels (`status="free"`).
func sumMetric(m map[string]float64, name string, labels ...string) float64 {
	var sum float64
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		all := true
		for _, l := range labels {
			all = all && strings.Contains(k, l)
		}
		if all {
			sum += v
		}
	}
	return sum
}

// TestLocalDisks: the operators' view on the real API server. Every disk
// of every node has a LocalDisk with the right phase and claim; a cordoned
// free disk leaves CSIStorageCapacity and is never allocated; a deleted
// claim's disk shows Cleaning with its progress, then Free; a cleanup that
// fails shows Failed with its reason, a Node event and the failure metric,
// and becomes Free once the device is fixed; each node's metrics agree with
// its LocalDisks; and the API server refuses a node driver's token any
// write to another node's LocalDisks or to a cordon.
func TestLocalDisks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	big := cluster.DiskSpec{SizeBytes: 3 * gib}
	e := startCluster(ctx, t, topology{real: disks(1, ssd), fake: [][]cluster.DiskSpec{disks(3, ssd), append(disks(2, ssd), big)}})
	a, b := e.fakes[0], e.fakes[1]
	nodes := append([]*cluster.Node{e.real}, e.fakes...)

	e.waitFor(ctx, "a Free LocalDisk per disk", func() error {
		got := map[string]string{}
		for _, d := range e.localDisks(ctx) {
			got[d.Spec.Node+" "+d.Status.Device] = d.Status.Phase
		}
		for _, n := range nodes {
			for _, l := range n.Loops {
				if got[n.Name+" "+l] != "Free" {
					return fmt.Errorf("%s %s: %q (all: %v)", n.Name, l, got[n.Name+" "+l], got)
				}
			}
		}
		if len(got) != 7 {
			return fmt.Errorf("%d LocalDisks: %v", len(got), got)
		}
		return nil
	})
	e.apply(ctx, "../../examples/storageclasses/ssd-ext4.yaml")
	e.apply(ctx, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: localdisk-shred}
provisioner: localdisk.csi.alibabacloud.com
volumeBindingMode: WaitForFirstConsumer
parameters: {cleanupPolicy: shred}`)

	// Cordon a free disk of a: its capacity drops by that disk.
	cordoned, _ := e.diskOn(ctx, a.Name, a.Loops[0])
	e.waitFor(ctx, a.Name+" reports 3 free disks", func() error {
		if got := e.capacity(ctx, a.Name); got != 3*gib {
			return fmt.Errorf("capacity %d", got)
		}
		return nil
	})
	e.kubectl(ctx, "", "patch", "localdisk", cordoned.Metadata.Name, "--type=merge", "-p", `{"spec":{"cordoned":true}}`)
	e.waitFor(ctx, "the cordon applied and out of capacity", func() error {
		d, _ := e.diskOn(ctx, a.Name, a.Loops[0])
		if got := e.capacity(ctx, a.Name); !d.Status.Cordoned || got != 2*gib {
			return fmt.Errorf("status.cordoned %v, capacity %d", d.Status.Cordoned, got)
		}
		return nil
	})

	// Four claims for the six free SSDs of 1 GiB, one for the big disk.
	e.apply(ctx, statefulSet("ld", "localdisk-ssd", 4, "512Mi"))
	e.apply(ctx, statefulSet("sh", "localdisk-shred", 1, "2Gi"))
	var c claims
	e.waitFor(ctx, "5 claims bound, their disks Allocated", func() error {
		c = e.claimsOf(ctx, "ld")
		s := e.claimsOf(ctx, "sh")
		if len(c.bound) != 4 || len(s.bound) != 1 {
			return fmt.Errorf("%d + %d bound", len(c.bound), len(s.bound))
		}
		for claim, pv := range map[string]object{"data-sh-0": s.bound["data-sh-0"]} {
			c.bound[claim] = pv
		}
		for claim, pv := range c.bound {
			d, ok := e.diskOfClaim(ctx, claim)
			if !ok || d.Status.Phase != "Allocated" || d.Status.Volume == nil || d.Status.Volume.PersistentVolume != pv.Metadata.Name {
				return fmt.Errorf("claim %s: LocalDisk %+v", claim, d.Status)
			}
		}
		return nil
	})
	if d, _ := e.diskOn(ctx, a.Name, a.Loops[0]); d.Status.Phase != "Free" {
		t.Fatalf("the cordoned disk was allocated: %+v", d.Status)
	}
	t.Logf("kubectl get localdisks -o wide:\n%s", e.kubectl(ctx, "", "get", "localdisks", "-o", "wide"))

	// Each node's metrics say what its LocalDisks say.
	for _, n := range nodes {
		m := scrape(ctx, t, n)
		phases := map[string]int{}
		cordons := 0
		for _, d := range e.localDisks(ctx) {
			if d.Spec.Node == n.Name {
				phases[strings.ToLower(d.Status.Phase)]++
				if d.Status.Cordoned {
					cordons++
				}
			}
		}
		for _, s := range []string{"free", "allocated", "cleaning", "failed", "excluded", "missing"} {
			if got := sumMetric(m, "localdisk_disks", `status="`+s+`"`, `node="`+n.Name+`"`); int(got) != phases[s] {
				t.Errorf("%s: localdisk_disks{status=%q} = %v, LocalDisks say %d", n.Name, s, got, phases[s])
			}
		}
		if got := sumMetric(m, "localdisk_cordoned_disks"); int(got) != cordons {
			t.Errorf("%s: localdisk_cordoned_disks = %v, LocalDisks say %d", n.Name, got, cordons)
		}
		if sumMetric(m, "localdisk_csi_operations_total", `method="CreateVolume"`, `grpc_code="OK"`) < 1 && phases["allocated"] > 0 {
			t.Errorf("%s: no CreateVolume counted", n.Name)
		}
	}

	// The shred claim goes: Cleaning with its progress, then Free.
	shredDisk, _ := e.diskOfClaim(ctx, "data-sh-0")
	phases := e.watch(ctx, "localdisks", shredDisk.Metadata.Name, "-o", `jsonpath={.status.phase} {.status.cleanup.progress}{"\n"}`)
	e.kubectl(ctx, "", "delete", "statefulset", "-n", "default", "sh", "--cascade=orphan")
	e.forceDeletePods(ctx, "sh-0")
	e.kubectl(ctx, "", "delete", "pvc", "-n", "default", "data-sh-0", "--wait=false")
	e.waitFor(ctx, "the shred disk Cleaning, then Free", func() error {
		var seen []string
		for _, l := range phases() {
			seen = append(seen, l.text)
		}
		s := strings.Join(seen, " | ")
		if !regexp.MustCompile(`Cleaning \d+%.*\| Free`).MatchString(s) {
			return fmt.Errorf("phases %q", s)
		}
		return nil
	})

	// A cleanup that fails: the disk's device turns read-only (attached
	// again, read-only, at the same number: the same disk to the driver).
	// (A claim on a kubelet-less node: no pod holds its device.)
	var victim localDisk
	for _, claim := range []string{"data-ld-0", "data-ld-1", "data-ld-2", "data-ld-3"} {
		if d, ok := e.diskOfClaim(ctx, claim); ok && d.Spec.Node != e.real.Name && victim.Spec.Node == "" {
			victim = d
		}
	}
	host := e.fakeNode(victim.Spec.Node)
	victimPod := strings.TrimPrefix(strings.TrimPrefix(victim.Status.Claim, "default/"), "data-")
	bf, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(victim.Status.Device), "loop", "backing_file"))
	if err != nil {
		t.Fatal(err)
	}
	backing := strings.TrimSpace(string(bf))
	reattach := func(readOnly bool) {
		t.Helper()
		if out, err := exec.Command("losetup", "-d", victim.Status.Device).CombinedOutput(); err != nil {
			t.Fatalf("losetup -d: %v %s", err, out)
		}
		args := []string{victim.Status.Device, backing}
		if readOnly {
			args = append([]string{"-r"}, args...)
		}
		if out, err := exec.Command("losetup", args...).CombinedOutput(); err != nil {
			t.Fatalf("losetup %v: %v %s", args, err, out)
		}
	}
	reattach(true)
	readOnly := true
	defer func() {
		if readOnly {
			reattach(false)
		}
	}()
	e.kubectl(ctx, "", "delete", "statefulset", "-n", "default", "ld", "--cascade=orphan")
	e.forceDeletePods(ctx, victimPod)
	e.kubectl(ctx, "", "delete", "pvc", "-n", "default", "data-"+victimPod, "--wait=false")
	e.waitFor(ctx, "the disk Failed with its reason, a Node event, the failure metric", func() error {
		d, _ := e.diskOn(ctx, host.Name, victim.Status.Device)
		if d.Status.Phase != "Failed" || !strings.Contains(d.Status.Reason, "cleanup discard of "+victim.Status.Device) {
			return fmt.Errorf("LocalDisk %+v", d.Status)
		}
		var events []string
		for _, ev := range e.list(ctx, "events", "-A", "--field-selector", "involvedObject.kind=Node,involvedObject.name="+host.Name+",reason=DiskCleanupFailed") {
			events = append(events, ev.Message)
		}
		if len(events) == 0 || !strings.Contains(events[0], victim.Spec.DiskID) {
			return fmt.Errorf("Node events %q", events)
		}
		m := scrape(ctx, t, host)
		if got := sumMetric(m, "localdisk_cleanup_failures_total", `policy="discard"`); got < 1 {
			return fmt.Errorf("localdisk_cleanup_failures_total %v", got)
		}
		if got := sumMetric(m, "localdisk_disks", `status="failed"`); got != 1 {
			return fmt.Errorf("localdisk_disks{status=failed} %v", got)
		}
		return nil
	})
	reattach(false)
	readOnly = false
	e.waitFor(ctx, "the fixed disk Free after a retry", func() error {
		if d, _ := e.diskOn(ctx, host.Name, victim.Status.Device); d.Status.Phase != "Free" {
			return fmt.Errorf("LocalDisk %+v", d.Status)
		}
		return nil
	})

	// The API server keeps a node driver to its own node's LocalDisks.
	asA := "--kubeconfig=" + a.ServiceAccountKubeconfig()
	ofB, _ := e.diskOn(ctx, b.Name, b.Loops[0])
	ofA, _ := e.diskOn(ctx, a.Name, a.Loops[1])
	// A status write as the driver makes it: a PUT of the whole object to
	// the status subresource (no read first, which the RBAC does not give).
	statusWrite := func(name, reason string) string {
		var obj map[string]any
		if err := json.Unmarshal([]byte(e.kubectl(ctx, "", "get", "localdisk", name, "-o", "json")), &obj); err != nil {
			t.Fatal(err)
		}
		obj["status"].(map[string]any)["reason"] = reason
		body, _ := json.Marshal(obj)
		return string(body)
	}
	bStatus := statusWrite(ofB.Metadata.Name, "forged by another node")
	refused := []struct {
		what, stdin string
		args        []string
		want        string
	}{
		{"status of another node's disk", bStatus, []string{"replace", "--subresource=status", "-f", "-"},
			"may only write the LocalDisks of its own node"},
		{"delete another node's disk", "", []string{"delete", "localdisk", ofB.Metadata.Name}, "may only write the LocalDisks of its own node"},
		{"create a disk of another node", fmt.Sprintf(`{"apiVersion":"localdisk.csi.alibabacloud.com/v1alpha1","kind":"LocalDisk",`+
			`"metadata":{"name":"%s-forged"},"spec":{"node":"%s","diskID":"forged"}}`, b.Name, b.Name), []string{"create", "-f", "-"},
			"may only write the LocalDisks of its own node"},
		{"cordon its own disk", "", []string{"patch", "localdisk", ofA.Metadata.Name, "--type=merge", "-p", `{"spec":{"cordoned":true}}`}, "forbidden"},
	}
	for _, r := range refused {
		out, err := e.cp.Kubectl(ctx, r.stdin, append([]string{asA}, r.args...)...)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()+out), strings.ToLower(r.want)) {
			t.Errorf("%s with %s's token: %v %s; want refused saying %q", r.what, a.Name, err, out, r.want)
		} else {
			t.Logf("%s with %s's token: refused: %s", r.what, a.Name, lastLine(err.Error()))
		}
	}
	if d, ok := e.diskOn(ctx, b.Name, b.Loops[0]); !ok || d.Status.Phase != ofB.Status.Phase {
		t.Errorf("%s's disk changed by %s's refused writes: %+v", b.Name, a.Name, d.Status)
	}
	// The same token may write its own node's disks (the policy lets the
	// driver work): a status write of a's disk goes through.
	aStatus := statusWrite(ofA.Metadata.Name, "written with the node's own token")
	if out, err := e.cp.Kubectl(ctx, aStatus, asA, "replace", "--subresource=status", "-f", "-"); err != nil {
		t.Errorf("%s's own status write refused: %v %s", a.Name, err, out)
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}
