// Package e2e runs the driver under a real control plane: etcd, the
// apiserver, the scheduler and the controller-manager from Kubernetes
// v1.36.1, a real kubelet with containerd, and csi-provisioner v6.4.0 beside
// every node's driver, all built by `make e2e-bins`. The driver and the
// provisioner run with the arguments, the ServiceAccount and the RBAC of the
// shipped manifests (deploy/kubernetes, rendered by kustomize).
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/tests/e2e/cluster"
)

const gib = int64(1) << 30

func binDir(t testing.TB) string {
	dir := os.Getenv("E2E_BIN")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = home + "/.cache/ecs-localdisk-csi/e2e/bin"
	}
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err != nil {
		t.Fatalf("no binaries in %s: run make e2e-bins first", dir)
	}
	return dir
}

var (
	buildOnce  sync.Once
	driverBin  string
	fakeECSBin string
	buildErr   error
)

// binaries builds the driver under test and the fakeecs command, once per
// run.
func binaries(t testing.TB) (driver, fakeECS string) {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "e2e-driver-")
		if err != nil {
			buildErr = err
			return
		}
		driverBin, fakeECSBin = filepath.Join(dir, "ecs-localdisk-csi"), filepath.Join(dir, "fakeecs")
		// "ecs-localdisk-csi controller" runs the controller binary beside it.
		ctrlBin := filepath.Join(dir, "ecs-localdisk-csi-controller")
		for bin, pkg := range map[string]string{driverBin: "./cmd/ecs-localdisk-csi", ctrlBin: "./cmd/ecs-localdisk-csi-controller", fakeECSBin: "./tests/fakeecs"} {
			cmd := exec.Command("go", "build", "-o", bin, pkg)
			cmd.Dir = "../.."
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("building %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return driverBin, fakeECSBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if driverBin != "" {
		os.RemoveAll(filepath.Dir(driverBin))
	}
	os.Exit(code)
}

func requireRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the e2e suite needs root (loop devices, mounts, containers) and CI runs it")
		}
		// Loop devices, mounts, containerd and the kubelet need root;
		// CI runs as root, and fails above instead of skipping.
		t.Skip("the e2e suite needs root (loop devices, mounts, containers); CI runs it as root")
	}
}

// topology says which nodes a test's cluster has.
type topology struct {
	fake [][]cluster.DiskSpec // one entry per kubelet-less node
	real []cluster.DiskSpec   // each real node's disks; nil for none
	// reals is the number of real nodes with the disks real (default 1);
	// more than one needs network.
	reals int
	// network gives each real node a network namespace and an address of
	// its own (cluster.Config.NodeNetwork).
	network bool
	images  []string      // OCI archives the real nodes import (cluster.Config.Images)
	poll    time.Duration // capacity poll interval
	apiQPS  int
	// dropRule removes one permission from the shipped RBAC (see
	// cluster.Rendered.DropRule); by default the E2E_DROP_RULE variable's.
	dropRule string
	// shipped runs the nodes' csi-provisioner with the shipped manifests'
	// flags (cluster.Config.Shipped), provisionerArgs set over them.
	shipped         bool
	provisionerArgs []string
}

// deployDir holds the shipped manifests.
const deployDir = "../../deploy/kubernetes"

// env is a running cluster of one test.
type env struct {
	t     testing.TB
	cp    *cluster.ControlPlane
	fakes []*cluster.Node
	real  *cluster.Node   // the first real node
	reals []*cluster.Node // every real node
	dir   string          // the cluster's directory: logs, certificates
}

// startCluster starts the control plane and the nodes; everything is
// stopped, unmounted and detached when the test ends, also on failure.
func startCluster(ctx context.Context, t testing.TB, topo topology) *env {
	requireRoot(t)
	drv, fake := binaries(t)
	dir, err := os.MkdirTemp("", "e2e-")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := cluster.Start(ctx, cluster.Config{Bin: binDir(t), Dir: dir, Driver: drv, FakeECS: fake, CapacityPoll: topo.poll, APIQPS: topo.apiQPS, NodeNetwork: topo.network, Images: topo.images,
		Shipped: topo.shipped, ProvisionerArgs: topo.provisionerArgs})
	if err != nil {
		t.Fatalf("control plane: %v (logs in %s)", err, dir)
	}
	t.Cleanup(func() {
		cp.Stop()
		if t.Failed() || os.Getenv("E2E_KEEP_LOGS") != "" {
			t.Logf("cluster logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	e := &env{t: t, cp: cp, dir: dir}
	drop := topo.dropRule
	if drop == "" {
		drop = os.Getenv("E2E_DROP_RULE")
	}
	if err := cp.Deploy(ctx, deployDir, drop); err != nil {
		t.Fatalf("deploying the manifests: %v", err)
	}
	for i := 0; topo.real != nil && i < max(topo.reals, 1); i++ {
		n, err := cp.AddRealNode(ctx, fmt.Sprintf("real-%d", i), topo.real)
		if err != nil {
			t.Fatalf("real node: %v (logs in %s)", err, dir)
		}
		e.reals = append(e.reals, n)
	}
	if len(e.reals) > 0 {
		e.real = e.reals[0]
	}
	for i, disks := range topo.fake {
		n, err := cp.AddFakeNode(ctx, fmt.Sprintf("fake-%d", i), disks)
		if err != nil {
			t.Fatalf("fake node: %v (logs in %s)", err, dir)
		}
		e.fakes = append(e.fakes, n)
	}
	return e
}

func disks(n int, d cluster.DiskSpec) []cluster.DiskSpec {
	out := make([]cluster.DiskSpec, n)
	for i := range out {
		out[i] = d
	}
	return out
}

func (e *env) kubectl(ctx context.Context, stdin string, args ...string) string {
	e.t.Helper()
	out, err := e.cp.Kubectl(ctx, stdin, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// apply applies a manifest file of the repository, or YAML/JSON text.
func (e *env) apply(ctx context.Context, fileOrText string) {
	e.t.Helper()
	if strings.HasSuffix(fileOrText, ".yaml") {
		e.kubectl(ctx, "", "apply", "-f", fileOrText)
		return
	}
	e.kubectl(ctx, fileOrText, "apply", "-f", "-")
}

// applyExample applies an example file as it is in the repository, with
// only the changes this cluster needs made on the way (edit gets each
// object: kind and the decoded object).
func (e *env) applyExample(ctx context.Context, file string, edit func(kind string, obj map[string]any)) {
	e.t.Helper()
	out := e.kubectl(ctx, "", "create", "--dry-run=client", "-o", "json", "-f", file)
	// One JSON object per document of the file.
	dec := json.NewDecoder(strings.NewReader(out))
	var items []any
	for dec.More() {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			e.t.Fatalf("%s: %v", file, err)
		}
		edit(obj["kind"].(string), obj)
		items = append(items, obj)
	}
	b, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	e.apply(ctx, string(b))
}

// podSpec returns the pod spec inside a Pod or a workload's template.
func podSpec(kind string, obj map[string]any) map[string]any {
	spec := obj["spec"].(map[string]any)
	if kind == "Pod" {
		return spec
	}
	return spec["template"].(map[string]any)["spec"].(map[string]any)
}

// hostNetwork is the one change every example pod needs here: the cluster
// has no pod network, only loopback.
func hostNetwork(kind string, obj map[string]any) {
	if kind == "Pod" || kind == "StatefulSet" {
		podSpec(kind, obj)["hostNetwork"] = true
	}
}

// object is the part of Kubernetes objects the tests read.
type object struct {
	Metadata struct {
		Name              string            `json:"name"`
		UID               string            `json:"uid"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp string            `json:"deletionTimestamp"`
		OwnerReferences   []struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"ownerReferences"`
	} `json:"metadata"`
	Spec struct {
		NodeName         string `json:"nodeName"`
		VolumeName       string `json:"volumeName"`
		StorageClassName string `json:"storageClassName"`
		ClaimRef         struct {
			Name string `json:"name"`
		} `json:"claimRef"`
		CSI struct {
			VolumeHandle     string            `json:"volumeHandle"`
			VolumeAttributes map[string]string `json:"volumeAttributes"`
		} `json:"csi"`
		NodeAffinity struct {
			Required struct {
				NodeSelectorTerms []struct {
					MatchExpressions []struct {
						Key    string   `json:"key"`
						Values []string `json:"values"`
					} `json:"matchExpressions"`
				} `json:"nodeSelectorTerms"`
			} `json:"required"`
		} `json:"nodeAffinity"`
	} `json:"spec"`
	Status struct {
		Phase             string `json:"phase"`
		ContainerStatuses []struct {
			Ready bool `json:"ready"`
		} `json:"containerStatuses"`
	} `json:"status"`
	// Events.
	Message        string `json:"message"`
	Reason         string `json:"reason"`
	InvolvedObject struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"involvedObject"`
	// CSIStorageCapacity.
	Capacity         string `json:"capacity"`
	StorageClassName string `json:"storageClassName"`
	NodeTopology     struct {
		MatchLabels map[string]string `json:"matchLabels"`
	} `json:"nodeTopology"`
}

// node is the node a PV is pinned to by its affinity.
func (o object) node() string {
	for _, term := range o.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, ex := range term.MatchExpressions {
			if ex.Key == cluster.TopologyKey && len(ex.Values) == 1 {
				return ex.Values[0]
			}
		}
	}
	return ""
}

func (o object) running() bool {
	if o.Status.Phase != "Running" || len(o.Status.ContainerStatuses) == 0 {
		return false
	}
	for _, c := range o.Status.ContainerStatuses {
		if !c.Ready {
			return false
		}
	}
	return true
}

func (e *env) list(ctx context.Context, args ...string) []object {
	e.t.Helper()
	out := e.kubectl(ctx, "", append([]string{"get", "-o", "json"}, args...)...)
	var l struct {
		Items []object `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		e.t.Fatalf("%v: %s", err, out)
	}
	return l.Items
}

func (e *env) get(ctx context.Context, args ...string) object {
	e.t.Helper()
	out := e.kubectl(ctx, "", append([]string{"get", "-o", "json"}, args...)...)
	var o object
	if err := json.Unmarshal([]byte(out), &o); err != nil {
		e.t.Fatalf("%v: %s", err, out)
	}
	return o
}

// find is get for an object that may not exist (yet, or any more): ok is
// false when it does not.
func (e *env) find(ctx context.Context, args ...string) (o object, ok bool) {
	e.t.Helper()
	out := e.kubectl(ctx, "", append([]string{"get", "-o", "json", "--ignore-not-found"}, args...)...)
	if strings.TrimSpace(out) == "" {
		return object{}, false
	}
	if err := json.Unmarshal([]byte(out), &o); err != nil {
		e.t.Fatalf("%v: %s", err, out)
	}
	return o, true
}

// waitFor polls check until it passes; it gives up 20s before ctx ends,
// so that the failure says what was last seen while kubectl still works.
func (e *env) waitFor(ctx context.Context, what string, check func() error) {
	e.t.Helper()
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-20*time.Second))
		defer cancel()
	}
	if err := cluster.WaitFor(ctx, what, check); err != nil {
		e.t.Fatal(err)
	}
}

// claims is the state of a StatefulSet's claims and pods.
type claims struct {
	bound     map[string]object // claim name -> its PV
	pods      map[string]object // pod name -> pod
	scheduled int
}

func (e *env) claimsOf(ctx context.Context, app string) claims {
	e.t.Helper()
	pvs := map[string]object{}
	for _, pv := range e.list(ctx, "pv") {
		pvs[pv.Metadata.Name] = pv
	}
	c := claims{bound: map[string]object{}, pods: map[string]object{}}
	for _, pvc := range e.list(ctx, "pvc", "-n", "default") {
		if pvc.Status.Phase == "Bound" && strings.HasPrefix(pvc.Metadata.Name, "data-"+app+"-") {
			c.bound[pvc.Metadata.Name] = pvs[pvc.Spec.VolumeName]
		}
	}
	for _, p := range e.list(ctx, "pods", "-n", "default", "-l", "app="+app) {
		c.pods[p.Metadata.Name] = p
		if p.Spec.NodeName != "" {
			c.scheduled++
		}
	}
	return c
}

// checkPlacement fails the test when a volume was given twice or a
// scheduled pod's volume is pinned to another node.
func (e *env) checkPlacement(c claims) {
	e.t.Helper()
	handles := map[string]string{}
	for claim, pv := range c.bound {
		if other, ok := handles[pv.Spec.CSI.VolumeHandle]; ok {
			e.t.Errorf("volume %s given to both %s and %s", pv.Spec.CSI.VolumeHandle, claim, other)
		}
		handles[pv.Spec.CSI.VolumeHandle] = claim
	}
	for name, p := range c.pods {
		pv, ok := c.bound["data-"+name]
		if p.Spec.NodeName == "" || !ok {
			continue
		}
		if pv.node() != p.Spec.NodeName {
			e.t.Errorf("pod %s runs on %s, its volume %s is pinned to %s", name, p.Spec.NodeName, pv.Metadata.Name, pv.node())
		}
	}
}

// forceDeletePods removes pods of kubelet-less nodes, which no kubelet
// would ever confirm gone.
func (e *env) forceDeletePods(ctx context.Context, args ...string) {
	e.t.Helper()
	e.kubectl(ctx, "", append([]string{"delete", "pods", "-n", "default", "--grace-period=0", "--force", "--wait=false"}, args...)...)
}

// statefulSet is a StatefulSet of the suite's own: n replicas, each claiming
// size from class, Parallel because pods on kubelet-less nodes never become
// Ready (OrderedReady would wait for them forever).
func statefulSet(name, class string, replicas int, size string) string {
	volumes := fmt.Sprintf(`
      containers: [{name: c, image: %[1]s, imagePullPolicy: Never, command: [sleep, "1000000"], volumeMounts: [{name: data, mountPath: /data}]}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], storageClassName: %[2]s, resources: {requests: {storage: %[3]s}}}`, cluster.BusyboxImage, class, size)
	if class == "" {
		volumes = fmt.Sprintf(`
      containers: [{name: c, image: %s, imagePullPolicy: Never, command: [sleep, "1000000"]}]`, cluster.BusyboxImage)
	}
	return fmt.Sprintf(`apiVersion: apps/v1
kind: StatefulSet
metadata: {name: %[1]s, namespace: default}
spec:
  serviceName: %[1]s
  replicas: %[2]d
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1%[3]s
`, name, replicas, volumes)
}

// line is one line of a watch's output and the time it arrived.
type line struct {
	at   time.Time
	text string
}

// watch runs `kubectl get --watch` with args until the test ends and
// returns a function giving the lines seen so far.
func (e *env) watch(ctx context.Context, args ...string) func() []line {
	e.t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	cmd := e.cp.KubectlCmd(wctx, append([]string{"get", "--watch"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	var mu sync.Mutex
	var lines []line
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, line{time.Now(), sc.Text()})
			mu.Unlock()
		}
	}()
	e.t.Cleanup(func() { cancel(); _ = cmd.Wait(); <-done })
	return func() []line {
		mu.Lock()
		defer mu.Unlock()
		return append([]line(nil), lines...)
	}
}
