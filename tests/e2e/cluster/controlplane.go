package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config says where the binaries are and where the cluster lives.
type Config struct {
	// Bin is the directory `make e2e-bins` fills.
	Bin string
	// Dir holds certificates, data, kubeconfigs and logs.
	Dir string
	// Driver is the driver binary under test, run once per node.
	Driver string
	// FakeECS is the fakeecs binary, for nodes with categorized disks.
	FakeECS string
	// CapacityPoll is the provisioners' --capacity-poll-interval (default 5s).
	CapacityPoll time.Duration
	// APIQPS is the controller-manager's and scheduler's --kube-api-qps
	// (default 100, burst twice that).
	APIQPS int
	// Shipped runs every node's driver and csi-provisioner with the
	// shipped values of the settings the harness otherwise changes for the
	// pace of its tests (see hostProcess: the driver's disk rescan
	// interval, the provisioner's API client limits and capacity poll
	// interval), for measurements of what the project ships.
	Shipped bool
	// ProvisionerArgs are flags ("--name=value" or "--name") set on every
	// node's csi-provisioner last, each replacing the flag's shipped or
	// harness value, for measurements of other settings.
	ProvisionerArgs []string
	// NodeNetwork gives the cluster a network of its own (see network):
	// the apiserver listens on its bridge, and each real node runs in a
	// network namespace with an address the apiserver reaches, so that
	// kubectl exec works and several real nodes can run.
	NodeNetwork bool
	// Images are OCI archives every real node's containerd imports, besides
	// the busybox image it always has.
	Images []string
}

// ControlPlane is a running etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler, on 127.0.0.1 or on the cluster network's bridge.
type ControlPlane struct {
	cfg        Config
	procs      procs
	pki        *pki
	APIServer  string // https://<address>:<port>
	Kubeconfig string // admin kubeconfig
	// Namespace is the deployment's namespace, where the provisioners keep
	// the CSIStorageCapacity objects; set by Deploy.
	Namespace string
	deployed  *deployment
	loops     []string

	reals  []*Node      // the real nodes
	net    *network     // the cluster's network, with Config.NodeNetwork
	execs  int          // ctr exec IDs handed out
	shells []*nodeShell // the real nodes' SSH servers (StartNodeSSH)
	// madeKubeletDir: the machine had no /var/lib/kubelet, the suite made
	// it as the nodes' mount point (see nodens.go).
	madeKubeletDir bool
	// ecs is the cluster's fake ECS, once a node or the controller needs it.
	ecs *ecsURLs
	// controllerLog is the log of the controller (StartController).
	controllerLog string
}

// Start brings the control plane up and waits until the apiserver is ready.
// On error everything started so far is stopped.
func Start(ctx context.Context, cfg Config) (cp *ControlPlane, err error) {
	cp = &ControlPlane{cfg: cfg}
	defer func() {
		if err != nil {
			cp.Stop()
			cp = nil
		}
	}()
	if cp.pki, err = newPKI(filepath.Join(cfg.Dir, "pki")); err != nil {
		return nil, err
	}
	listen := net.ParseIP("127.0.0.1")
	if cfg.NodeNetwork {
		if cp.net, err = newNetwork(); err != nil {
			return nil, err
		}
		listen = cp.net.host
	}
	if err = cp.pki.issue("apiserver", "kube-apiserver", nil, []net.IP{listen, net.ParseIP("10.0.0.1")},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}, true); err != nil {
		return nil, err
	}
	if err = cp.pki.issue("admin", "e2e-admin", []string{"system:masters"}, nil, nil, false); err != nil {
		return nil, err
	}
	// The apiserver's client identity towards the kubelet (exec, logs).
	if err = cp.pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil, false); err != nil {
		return nil, err
	}
	if err = cp.pki.serviceAccountKey(); err != nil {
		return nil, err
	}
	etcdURL, err := cp.startEtcd(ctx)
	if err != nil {
		return nil, err
	}
	if err = cp.startAPIServer(ctx, etcdURL, listen); err != nil {
		return nil, err
	}
	if cp.Kubeconfig, err = cp.writeKubeconfig("admin"); err != nil {
		return nil, err
	}
	if err = cp.startControllers(); err != nil {
		return nil, err
	}
	return cp, nil
}

// Stop stops every process by PID, newest first (the real node's kubelet
// and containers before the rest), then unmounts what the nodes mounted
// under the cluster directory, detaches the loop devices and removes the
// cgroups the containers left.
func (cp *ControlPlane) Stop() {
	for _, s := range cp.shells {
		s.stop()
	}
	cp.stopRealNodes()
	cp.procs.stopAll()
	for _, n := range cp.reals {
		for _, pid := range shimPIDs(n.real.containerd) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	cp.detachKubeletLoops()
	unmountUnder(cp.cfg.Dir)
	cp.detachLoops()
	for _, n := range cp.reals {
		removeCgroups(n.real.cgroups)
	}
	if cp.net != nil {
		cp.net.close()
	}
	cp.removeKubeletDir()
}

func (cp *ControlPlane) bin(name string) string { return filepath.Join(cp.cfg.Bin, name) }

func (cp *ControlPlane) startEtcd(ctx context.Context) (string, error) {
	client, err := freePort()
	if err != nil {
		return "", err
	}
	peer, err := freePort()
	if err != nil {
		return "", err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	p, err := cp.procs.start(cp.cfg.Dir, "etcd", cp.bin("etcd"),
		"--name=e2e", "--data-dir="+filepath.Join(cp.cfg.Dir, "etcd"),
		"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=e2e="+peerURL, "--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return "", err
	}
	return clientURL, waitFor(ctx, p, "etcd", func() error {
		resp, err := http.Get(clientURL + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	})
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, etcdURL string, listen net.IP) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	cp.APIServer = "https://" + net.JoinHostPort(listen.String(), strconv.Itoa(port))
	k := cp.pki.path
	p, err := cp.procs.start(cp.cfg.Dir, "kube-apiserver", cp.bin("kube-apiserver"),
		"--etcd-servers="+etcdURL, "--bind-address="+listen.String(), "--advertise-address="+listen.String(),
		"--secure-port="+strconv.Itoa(port),
		"--tls-cert-file="+k("apiserver.crt"), "--tls-private-key-file="+k("apiserver.key"),
		"--client-ca-file="+k("ca.crt"),
		"--service-account-key-file="+k("sa.pub"), "--service-account-signing-key-file="+k("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		// The service range is never contacted: every test pod uses the host network.
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=Node,RBAC",
		// Kubelet-less nodes never report Ready: no taint may keep pods off them.
		"--disable-admission-plugins=TaintNodesByCondition,ServiceAccount",
		"--kubelet-client-certificate="+k("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+k("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true", "--v=1")
	if err != nil {
		return err
	}
	client, err := cp.httpClient()
	if err != nil {
		return err
	}
	return waitFor(ctx, p, "kube-apiserver", func() error {
		resp, err := client.Get(cp.APIServer + "/readyz")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return nil
	})
}

// httpClient talks to the apiserver as the admin.
func (cp *ControlPlane) httpClient() (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(cp.pki.path("admin.crt"), cp.pki.path("admin.key"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cp.pki.caCert)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}}}, nil
}

func (cp *ControlPlane) writeKubeconfig(user string) (string, error) {
	k := cp.pki.path
	return cp.kubeconfig(filepath.Join(cp.cfg.Dir, user+".kubeconfig"), user,
		fmt.Sprintf("client-certificate: %s\n    client-key: %s", k(user+".crt"), k(user+".key")))
}

// kubeconfig writes a kubeconfig for the apiserver to path: user with the
// credential lines of credentials (indented under user:).
func (cp *ControlPlane) kubeconfig(path, user, credentials string) (string, error) {
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    %s
contexts:
- name: e2e
  context:
    cluster: e2e
    user: %s
current-context: e2e
`, cp.APIServer, cp.pki.path("ca.crt"), user, credentials, user)
	return path, os.WriteFile(path, []byte(content), 0o600)
}

func (cp *ControlPlane) startControllers() error {
	k := cp.pki.path
	qps := cp.cfg.APIQPS
	if qps == 0 {
		qps = 100
	}
	limits := []string{"--kube-api-qps=" + strconv.Itoa(qps), "--kube-api-burst=" + strconv.Itoa(2*qps)}
	if _, err := cp.procs.start(cp.cfg.Dir, "kube-controller-manager", cp.bin("kube-controller-manager"),
		"--kubeconfig="+cp.Kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
		// The node-lifecycle controller would evict everything from the
		// kubelet-less nodes.
		"--controllers=*,-nodelifecycle,-nodeipam,-service,-route,-cloud-node-lifecycle",
		"--service-account-private-key-file="+k("sa.key"), "--root-ca-file="+k("ca.crt"),
		"--cluster-signing-cert-file="+k("ca.crt"), "--cluster-signing-key-file="+k("ca.key"),
		"--use-service-account-credentials=false", "--v=1", limits[0], limits[1]); err != nil {
		return err
	}
	_, err := cp.procs.start(cp.cfg.Dir, "kube-scheduler", cp.bin("kube-scheduler"),
		"--kubeconfig="+cp.Kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "--v=1", limits[0], limits[1])
	return err
}

// Kubectl runs kubectl against the cluster and returns its combined output.
func (cp *ControlPlane) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := execCommand(ctx, cp.bin("kubectl"), append([]string{"--kubeconfig=" + cp.Kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// KubectlCmd is a kubectl command against the cluster, for callers that
// stream its output (watches).
func (cp *ControlPlane) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	return execCommand(ctx, cp.bin("kubectl"), append([]string{"--kubeconfig=" + cp.Kubeconfig}, args...)...)
}
