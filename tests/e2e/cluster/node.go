package cluster

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// DriverName is the CSI driver under test.
const DriverName = "localdisk.csi.alibabacloud.com"

// TopologyKey is the driver's one topology key.
const TopologyKey = "topology." + DriverName + "/node"

// DiskSpec is one loop-device disk of a node.
type DiskSpec struct {
	SizeBytes int64
	HDD       bool
	// Category, when set on any disk of a node, makes that node's driver
	// find its disks through the ECS source, against a fake ECS on loopback
	// (the fakeecs command) that lists each disk with its category; a loop
	// device's serial, as the ECS source sees it, is its backing file.
	Category string
}

// Node is one node of the cluster: its loop-device disks and the driver and
// csi-provisioner containers of its DaemonSet pod, run as host processes. A
// fake node is a Node and a CSINode object made by the suite; a real node
// has a kubelet and containerd.
type Node struct {
	Name  string
	Loops []string
	Real  bool
	real  *realNode // what a real node runs besides the driver
	// Pod is the node's DaemonSet pod, which the DaemonSet controller made
	// and the scheduler bound (no kubelet runs it); "" on the real node.
	Pod    string
	podUID string
	dir    string
	sock   string // the driver's CSI socket
	// driverLog is the log of the node's driver.
	driverLog string
	disks     []DiskSpec
	// procs are the node's DaemonSet containers run as host processes.
	procs []*proc
	// ecsMetadata is the node's instance's metadata server in the fake
	// ECS, once added; diskIDs are its disks' ECS IDs, by loop.
	ecsMetadata string
	diskIDs     []string
}

// AddFakeNode creates the node's disks and registers the node with the
// apiserver, labelled for the DaemonSet, waits for its DaemonSet pod, and
// starts the pod's driver and provisioner. Deploy must have run.
func (cp *ControlPlane) AddFakeNode(ctx context.Context, name string, disks []DiskSpec) (*Node, error) {
	if cp.deployed == nil {
		return nil, fmt.Errorf("no deployment: call Deploy first")
	}
	n, err := cp.newNode(name, disks)
	if err != nil {
		return nil, err
	}
	if _, err := cp.Kubectl(ctx, fakeNodeYAML(name, len(disks), cp.deployed.static.Spec.Template.Spec.NodeSelector), "apply", "-f", "-"); err != nil {
		return nil, err
	}
	if n.Pod, n.podUID, err = cp.daemonSetPod(ctx, name); err != nil {
		return nil, err
	}
	if err := cp.startDriver(ctx, n); err != nil {
		return nil, err
	}
	return n, cp.startProvisioner(ctx, n)
}

// RegisterNode registers a kubelet-less node again after a test deleted
// its Node object, as a kubelet does when it starts: the same name, labels
// and CSINode. Its driver and provisioner keep running.
func (cp *ControlPlane) RegisterNode(ctx context.Context, n *Node) error {
	if n.real != nil {
		return fmt.Errorf("%s is a real node: its kubelet registers it", n.Name)
	}
	_, err := cp.Kubectl(ctx, fakeNodeYAML(n.Name, len(n.disks), cp.deployed.static.Spec.Template.Spec.NodeSelector), "apply", "-f", "-")
	return err
}

func (cp *ControlPlane) newNode(name string, disks []DiskSpec) (*Node, error) {
	n := &Node{Name: name, dir: filepath.Join(cp.cfg.Dir, "nodes", name), disks: disks}
	if err := os.MkdirAll(n.dir, 0o700); err != nil {
		return nil, err
	}
	for i, d := range disks {
		loop, err := cp.attachLoop(filepath.Join(n.dir, fmt.Sprintf("disk%d.img", i)), d)
		if err != nil {
			return nil, err
		}
		n.Loops = append(n.Loops, loop)
	}
	return n, nil
}

// startDriver runs the driver under test for the node, as the DaemonSet's
// driver container (see hostProcess), and waits for its socket.
func (cp *ControlPlane) startDriver(ctx context.Context, n *Node) error {
	metadata, api, err := cp.fakeECS(ctx, n)
	if err != nil {
		return err
	}
	kubeconfig, err := cp.serviceAccountKubeconfig(ctx, n)
	if err != nil {
		return err
	}
	args, env, err := cp.hostProcess(n, "driver", hostSide{metadataURL: metadata, ecsURL: api, kubeconfig: kubeconfig})
	if err != nil {
		return err
	}
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--endpoint=unix://"); ok {
			n.sock = v
		}
	}
	if n.sock == "" {
		return fmt.Errorf("the driver container has no --endpoint=unix://: %q", args)
	}
	// The kubelet makes the hostPath directories (DirectoryOrCreate).
	if err := os.MkdirAll(filepath.Dir(n.sock), 0o700); err != nil {
		return err
	}
	var drv *proc
	if n.real != nil {
		// On a real node the driver runs where its kubelet does: in the
		// node's own mount namespace when it has one, so that its mounts
		// are the kubelet's and the containers'.
		drv, err = cp.startIn(n, "driver", env, cp.cfg.Driver, args...)
	} else {
		drv, err = cp.procs.startEnv(n.dir, "driver", cp.cfg.Driver, env, args...)
	}
	if err != nil {
		return err
	}
	n.driverLog = drv.log
	n.procs = append(n.procs, drv)
	return waitFor(ctx, drv, n.Name+" driver socket", func() error { _, err := os.Stat(n.sock); return err })
}

// MetricsURL is the URL of the node driver's /metrics, from the address
// its log says it serves.
func (n *Node) MetricsURL() (string, error) {
	b, err := os.ReadFile(n.driverLog)
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`"Serving metrics" address="([^"]+)"`).FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return "", fmt.Errorf("the driver of %s does not serve metrics (yet)", n.Name)
	}
	return "http://" + string(m[len(m)-1][1]) + "/metrics", nil
}

// fakeECS adds the instance of a node whose disks have categories to the
// cluster's fake ECS (the fakeecs command), which lists each disk with its
// category, and returns the instance's metadata URL and the OpenAPI URL,
// or "", "" for a node without categories.
func (cp *ControlPlane) fakeECS(ctx context.Context, n *Node) (metadata, api string, err error) {
	categorized := false
	for _, d := range n.disks {
		categorized = categorized || d.Category != ""
	}
	if !categorized {
		return "", "", nil
	}
	urls, err := cp.clusterECS(ctx)
	if err != nil {
		return "", "", fmt.Errorf("%s has disks with categories: %w", n.Name, err)
	}
	if n.ecsMetadata != "" {
		return n.ecsMetadata, urls.API, nil // a driver started again
	}
	type disk struct {
		ID, Category, InstanceID, Serial string
		SizeGiB                          int
	}
	id := n.InstanceID()
	spec := map[string]any{
		// One instance type per node: the type says how many local disks
		// the instance has, and nodes have different counts.
		"Instance": map[string]string{"ID": id, "Type": "ecs.e2e." + n.Name, "Region": "cn-hangzhou", "Zone": "cn-hangzhou-k"},
		"Type":     map[string]any{"LocalStorageAmount": len(n.Loops), "LocalStorageGiB": 1, "LocalStorageCategory": "local_ssd_pro"},
	}
	var ds []disk
	for i, loop := range n.Loops {
		backing, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loop), "loop/backing_file"))
		ds = append(ds, disk{ID: fmt.Sprintf("d-%s-%d", n.Name, i), Category: n.disks[i].Category,
			InstanceID: id, Serial: strings.TrimSpace(string(backing)), SizeGiB: int(n.disks[i].SizeBytes >> 30)})
		n.diskIDs = append(n.diskIDs, ds[i].ID)
	}
	spec["Disks"] = ds
	n.ecsMetadata, err = cp.addInstance(ctx, spec)
	return n.ecsMetadata, urls.API, err
}

// startProvisioner runs the node's csi-provisioner in distributed mode, as
// the DaemonSet's csi-provisioner container (see hostProcess), with the
// DaemonSet's ServiceAccount and so only the rights the shipped RBAC gives.
func (cp *ControlPlane) startProvisioner(ctx context.Context, n *Node) error {
	kubeconfig, err := cp.serviceAccountKubeconfig(ctx, n)
	if err != nil {
		return err
	}
	args, env, err := cp.hostProcess(n, "csi-provisioner", hostSide{kubeconfig: kubeconfig})
	if err != nil {
		return err
	}
	prov, err := cp.procs.startEnv(n.dir, "csi-provisioner", cp.bin("csi-provisioner"), env, args...)
	if err != nil {
		return err
	}
	n.procs = append(n.procs, prov)
	// Ready once it has probed the driver and runs its capacity controller
	// (the CSIStorageCapacity objects follow per StorageClass).
	return waitFor(ctx, prov, n.Name+" csi-provisioner", func() error {
		b, err := os.ReadFile(prov.log)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "Starting Capacity Controller") {
			return fmt.Errorf("capacity controller not started")
		}
		return nil
	})
}

// fakeNodeYAML is a kubelet-less node, with the labels a kubelet would
// give it and those the DaemonSet selects its nodes by, and its CSINode.
func fakeNodeYAML(name string, disks int, selector map[string]string) string {
	labels := map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", TopologyKey: name}
	maps.Copy(labels, selector)
	var lines string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		lines += fmt.Sprintf("    %s: %q\n", k, labels[k])
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Node
metadata:
  name: %[1]s
  labels:
%[2]sstatus:
  capacity: {cpu: "8", memory: 32Gi, pods: "110"}
  allocatable: {cpu: "8", memory: 32Gi, pods: "110"}
  conditions:
  - {type: Ready, status: "True", reason: Fake, message: kubelet-less node of the e2e suite}
---
apiVersion: storage.k8s.io/v1
kind: CSINode
metadata:
  name: %[1]s
spec:
  drivers:
  - name: %[3]s
    nodeID: %[1]s
    topologyKeys: [%[5]s]
    allocatable: {count: %[4]d}
`, name, lines, DriverName, disks, TopologyKey)
}

// attachLoop makes a sparse file and a loop device on it, detached at Stop.
func (cp *ControlPlane) attachLoop(file string, d DiskSpec) (string, error) {
	f, err := os.Create(file)
	if err != nil {
		return "", err
	}
	if err := f.Truncate(d.SizeBytes); err != nil {
		f.Close()
		return "", err
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", file).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	cp.loops = append(cp.loops, loop)
	rot := "0"
	if d.HDD {
		rot = "1"
	}
	return loop, os.WriteFile(filepath.Join("/sys/block", filepath.Base(loop), "queue/rotational"), []byte(rot), 0o644)
}

// detachKubeletLoops detaches the loop devices the kubelet made for block
// volumes: their backing files are device nodes bind-mounted in the
// cluster directory, which they keep busy.
func (cp *ControlPlane) detachKubeletLoops() {
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[1], cp.cfg.Dir+"/") && !slices.Contains(cp.loops, f[0]) {
			_ = exec.Command("losetup", "--detach", f[0]).Run()
		}
	}
}

// detachLoops detaches the loop devices the cluster made for its disks.
func (cp *ControlPlane) detachLoops() {
	for _, l := range cp.loops {
		_ = exec.Command("blockdev", "--setrw", l).Run()
		_ = exec.Command("losetup", "--detach", l).Run()
	}
	cp.loops = nil
}

// WaitFor polls check every 200ms until it succeeds or ctx ends.
func WaitFor(ctx context.Context, what string, check func() error) error {
	return waitFor(ctx, nil, what, check)
}

// Log is the path of the log of one of the node's processes: "driver",
// "csi-provisioner", "kubelet" or "containerd".
func (n *Node) Log(process string) string { return filepath.Join(n.dir, process+".log") }
