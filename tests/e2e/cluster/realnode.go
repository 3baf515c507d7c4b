package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// AddRealNode starts containerd and a kubelet for a node called name, with
// the busybox image imported, runs the driver and csi-provisioner
// containers of the DaemonSet as host processes, and registers the driver
// with the kubelet through the plugin-registration API, as the DaemonSet's
// node-driver-registrar would. Pods on it run for real: volumes are staged
// and published by the kubelet through the driver. Deploy must have run.
//
// The node is not labelled for the DaemonSet, so it gets no DaemonSet pod:
// its kubelet would run that pod, with hostPath volumes naming this
// machine's own /var/lib/kubelet (the suite's kubelet has its root in a
// temporary directory), /dev and /sys, and images that are not built here.
// Its provisioner therefore has no pod to find the CSIStorageCapacity
// objects' owner from (see hostProcess); its token is bound to the Node.
func (cp *ControlPlane) AddRealNode(ctx context.Context, name string, disks []DiskSpec) (*Node, error) {
	if cp.real != nil {
		return nil, fmt.Errorf("the cluster has a real node already")
	}
	if cp.deployed == nil {
		return nil, fmt.Errorf("no deployment: call Deploy first")
	}
	n, err := cp.newNode(name, disks)
	if err != nil {
		return nil, err
	}
	n.Real = true
	cp.real = n
	cp.cgroups = newCgroups("k8s.io")
	cd := filepath.Join(n.dir, "containerd")
	sock := filepath.Join(cd, "containerd.sock")
	if err := cp.startContainerd(ctx, n, cd, sock); err != nil {
		return nil, err
	}
	if err := cp.startKubelet(ctx, n, n.root(), sock); err != nil {
		return nil, err
	}
	if err := cp.startDriver(ctx, n); err != nil {
		return nil, err
	}
	if err := cp.registerPlugin(ctx, n); err != nil {
		return nil, err
	}
	return n, cp.startProvisioner(ctx, n)
}

func (cp *ControlPlane) startContainerd(ctx context.Context, n *Node, dir, sock string) error {
	for _, d := range []string{"root", "state", "opt", "cni/bin", "cni/conf"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  # Needed on this kind of machine: the runtime may not lower its OOM score.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  # No CNI: every pod of the suite uses the host network.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "opt"),
		BusyboxImage, filepath.Join(dir, "cni/bin"), filepath.Join(dir, "cni/conf"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	p, err := cp.procs.start(n.dir, "containerd", "containerd", "--config", cfgPath, "--log-level=warn")
	if err != nil {
		return err
	}
	cp.containerd = sock
	if err := waitFor(ctx, p, "containerd", func() error {
		return exec.CommandContext(ctx, "ctr", "--address", sock, "version").Run()
	}); err != nil {
		return err
	}
	tarball := filepath.Join(dir, "busybox-oci.tar")
	if err := buildBusyboxOCI("/bin/busybox", tarball); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "ctr", "--address", sock, "-n", "k8s.io", "images", "import", tarball).CombinedOutput(); err != nil {
		return fmt.Errorf("importing busybox: %v: %s", err, out)
	}
	out, err := exec.CommandContext(ctx, "ctr", "--address", sock, "-n", "k8s.io", "images", "ls", "-q").CombinedOutput()
	if err != nil || !strings.Contains(string(out), BusyboxImage) {
		return fmt.Errorf("busybox image not imported (%v): %s", err, out)
	}
	return nil
}

func (cp *ControlPlane) startKubelet(ctx context.Context, n *Node, root, runtimeSock string) error {
	if err := cp.pki.issue("kubelet-"+n.Name, "system:node:"+n.Name, []string{"system:nodes"}, nil, nil, false); err != nil {
		return err
	}
	kubeconfig, err := cp.writeKubeconfig("kubelet-" + n.Name)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %q}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://%s
# cgroup v1 on this machine, and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
volumePluginDir: %q
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "0%%", imagefs.available: "0%%", nodefs.inodesFree: "0%%"}
localStorageCapacityIsolation: false
serializeImagePulls: false
resolvConf: ""
`, port, cp.pki.path("ca.crt"), runtimeSock, filepath.Join(root, "volume-plugins"))
	cfgPath := filepath.Join(n.dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	p, err := cp.procs.start(n.dir, "kubelet", cp.bin("kubelet"), "--config="+cfgPath, "--kubeconfig="+kubeconfig,
		"--root-dir="+root, "--hostname-override="+n.Name, "--node-ip=127.0.0.1",
		"--v=2")
	if err != nil {
		return err
	}
	cp.kubelet = p
	return waitFor(ctx, p, "kubelet registers "+n.Name, func() error {
		_, err := cp.Kubectl(ctx, "", "get", "node", n.Name)
		return err
	})
}

// registrar answers the kubelet's plugin watcher for the driver.
type registrar struct {
	registerapi.UnimplementedRegistrationServer
	endpoint string
	status   chan *registerapi.RegistrationStatus
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: DriverName, Endpoint: r.endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	select {
	case r.status <- s:
	default:
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// registerPlugin does the DaemonSet's node-driver-registrar's work: it
// serves the registration socket in the directory the registrar's
// /registration mount names, announces the endpoint its
// --kubelet-registration-path names, and waits until the kubelet has put
// the driver in the node's CSINode object.
func (cp *ControlPlane) registerPlugin(ctx context.Context, n *Node) error {
	ds := cp.deployed.static
	c, err := Container(ds, "node-driver-registrar")
	if err != nil {
		return err
	}
	dir, ok := containerToHost(&ds.Spec.Template.Spec, c, n, "/registration")
	if !ok {
		return fmt.Errorf("node-driver-registrar mounts no hostPath at /registration")
	}
	endpoint := ""
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--kubelet-registration-path="); ok {
			endpoint = n.hostPath(v)
		}
	}
	// The registrar tells the kubelet a path of the machine: it must be the
	// driver's socket, where the driver container's endpoint lies.
	if endpoint != n.sock {
		return fmt.Errorf("node-driver-registrar's --kubelet-registration-path is %s on this node, the driver serves %s", endpoint, n.sock)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// The kubelet asks for the node's topology as soon as it is told of the
	// driver, which refuses until it has its disks; the registrar then exits
	// and the kubelet restarts it, so it registers again. The same here, a
	// second later, a bounded number of times.
	const attempts = 20
	for attempt := 1; ; attempt++ {
		status, err := cp.serveRegistration(filepath.Join(dir, DriverName+"-reg.sock"), endpoint)
		if err != nil {
			return err
		}
		var s *registerapi.RegistrationStatus
		select {
		case s = <-status:
		case <-ctx.Done():
			return fmt.Errorf("kubelet never asked for the driver's registration: %w", ctx.Err())
		}
		if s.PluginRegistered {
			break
		}
		if attempt == attempts {
			return fmt.Errorf("kubelet refused the driver %d times, last: %s", attempts, s.Error)
		}
		cp.registrar.Stop()
		cp.registrar = nil
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return fmt.Errorf("kubelet refused the driver: %s", s.Error)
		}
	}
	return WaitFor(ctx, "CSINode of "+n.Name, func() error {
		out, err := cp.Kubectl(ctx, "", "get", "csinode", n.Name, "-o", "jsonpath={.spec.drivers[*].name}")
		if err != nil {
			return err
		}
		if !strings.Contains(out, DriverName) {
			return fmt.Errorf("driver not in CSINode: %q", out)
		}
		return nil
	})
}

// serveRegistration serves the plugin-registration API on sock, announcing
// the driver at endpoint, and returns the channel the kubelet's verdict
// arrives on.
func (cp *ControlPlane) serveRegistration(sock, endpoint string) (<-chan *registerapi.RegistrationStatus, error) {
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer()
	r := &registrar{endpoint: endpoint, status: make(chan *registerapi.RegistrationStatus, 1)}
	registerapi.RegisterRegistrationServer(srv, r)
	go func() { _ = srv.Serve(l) }()
	cp.registrar = srv
	return r.status, nil
}

// stopRealNode stops the kubelet, then every container of the node by the
// PIDs of their shims, before the remaining processes stop. The kubelet goes
// first, so nothing restarts the containers.
func (cp *ControlPlane) stopRealNode() {
	if cp.registrar != nil {
		cp.registrar.Stop()
	}
	if cp.kubelet != nil {
		cp.kubelet.stop(10 * time.Second)
	}
	if cp.containerd == "" {
		return
	}
	ctr := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "ctr", append([]string{"--address", cp.containerd, "-n", "k8s.io"}, args...)...).Output()
		return string(out)
	}
	tasks := strings.Fields(ctr("tasks", "ls", "-q"))
	for _, id := range tasks {
		ctr("tasks", "kill", "-s", "SIGKILL", id)
	}
	for i := 0; i < 50 && strings.Contains(ctr("tasks", "ls"), "RUNNING"); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	for _, id := range tasks {
		ctr("tasks", "delete", "--force", id)
	}
	// Whatever shim is left (containerd already gone, say) dies by PID.
	for _, pid := range shimPIDs(cp.containerd) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// shimPIDs lists the containerd shims serving the containerd at address.
func shimPIDs(address string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.Contains(args[0], "containerd-shim") && strings.Contains(string(b), address) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Exec runs a command in the first container of a pod on the real node,
// through containerd (ctr tasks exec). kubectl exec would need the
// apiserver to reach the kubelet at the node's address, and the kubelet
// refuses a loopback node IP; the suite adds no other address.
func (cp *ControlPlane) Exec(ctx context.Context, namespace, pod string, cmd ...string) (string, error) {
	id, err := cp.Kubectl(ctx, "", "get", "pod", "-n", namespace, pod, "-o", "jsonpath={.status.containerStatuses[0].containerID}")
	if err != nil {
		return "", err
	}
	id = strings.TrimPrefix(strings.TrimSpace(id), "containerd://")
	if id == "" || cp.containerd == "" {
		return "", fmt.Errorf("pod %s/%s has no container on the real node", namespace, pod)
	}
	cp.execs++
	args := append([]string{"--address", cp.containerd, "-n", "k8s.io", "tasks", "exec", "--exec-id", fmt.Sprintf("e2e-%d", cp.execs), id}, cmd...)
	out, err := exec.CommandContext(ctx, "ctr", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("exec in %s/%s %v: %w: %s", namespace, pod, cmd, err, out)
	}
	return string(out), nil
}

// newCgroups lists the cgroup directories called name (the parent of the
// containers' cgroups) that do not exist yet, in every cgroup v1 hierarchy
// and in the v2 root: those are the suite's to remove.
func newCgroups(name string) []string {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	var dirs []string
	for _, r := range roots {
		if fi, err := os.Stat(r); err != nil || !fi.IsDir() {
			continue
		}
		d := filepath.Join(r, name)
		if _, err := os.Stat(d); os.IsNotExist(err) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// removeCgroups removes the cgroup trees below dirs, deepest first; a
// cgroup with a process left in it stays (rmdir fails), never killed here.
func removeCgroups(dirs []string) {
	// A cgroup whose last process just died can stay busy for a moment.
	for attempt := 0; attempt < 20 && len(dirs) > 0; attempt++ {
		var left []string
		for _, d := range dirs {
			var tree []string
			_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
				if err == nil && e.IsDir() {
					tree = append(tree, p)
				}
				return nil
			})
			for i := len(tree) - 1; i >= 0; i-- {
				_ = syscall.Rmdir(tree[i])
			}
			if _, err := os.Stat(d); err == nil {
				left = append(left, d)
			}
		}
		dirs = left
		if len(dirs) > 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
}
