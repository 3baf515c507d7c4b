// Package options holds the command-line options of the driver binary and
// their validation.
package options

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
)

// DefaultDriverName is the CSI driver name used when --driver-name is not set.
const DefaultDriverName = "localdisk.csi.alibabacloud.com"

// Options are the driver's settings.
type Options struct {
	Endpoint   string
	NodeID     string
	DriverName string
	StateDir   string
	DiskSource string
	Devices    string
	Version    bool

	// AllowNoDisks makes a node whose --devices match no disk ready all
	// the same (static source).
	AllowNoDisks bool

	// ECS source.
	MetadataEndpoint string
	ECSEndpoint      string
	CredentialsFile  string
	RAMRole          string

	SerialLessFallback bool
	DeviceStartWith    string

	// CleanupMaxRate caps the write rate of a zero or shred cleanup, per
	// disk, as bytes per second with an optional Ki, Mi or Gi suffix; "" or
	// "0" is no cap. CleanupCheckpointInterval is how often such a cleanup
	// records its progress.
	CleanupMaxRate            string
	CleanupCheckpointInterval time.Duration

	// MetricsAddress is where /metrics is served (host:port); "" is off.
	MetricsAddress string

	// Kubeconfig, KubeAPIQPS and KubeAPIBurst reach the Kubernetes API for
	// the LocalDisk mirror and events; DiskRescanInterval is how often the
	// node's disks are discovered again.
	Kubeconfig         string
	KubeAPIQPS         float64
	KubeAPIBurst       int
	DiskRescanInterval time.Duration
}

// AddFlags registers the options on fs, with defaults from the environment
// where Kubernetes sets one (NODE_NAME).
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint: unix:///path/to/csi.sock")
	fs.StringVar(&o.NodeID, "node-id", os.Getenv("NODE_NAME"), "this node's ID, the Kubernetes node name (default: env NODE_NAME)")
	fs.StringVar(&o.DriverName, "driver-name", DefaultDriverName, "CSI driver name")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/kubelet/plugins/"+DefaultDriverName+"/state", "directory of the node state record")
	fs.StringVar(&o.DiskSource, "disk-source", "static", "where the node's disks come from: static (--devices) or ecs (the instance's local disks, matched by serial)")
	fs.StringVar(&o.Devices, "devices", "", "comma-separated device paths or globs, e.g. /dev/vdb,/dev/vdc (a glob also matches cloud disks); required for static, optional for ecs (default /dev/vd*,/dev/nvme*n*,/dev/sd*,/dev/xvd*)")
	fs.StringVar(&o.MetadataEndpoint, "metadata-endpoint", os.Getenv("ALIBABA_CLOUD_METADATA_ENDPOINT"), "ecs: instance metadata server (default http://100.100.100.200; env ALIBABA_CLOUD_METADATA_ENDPOINT)")
	fs.StringVar(&o.ECSEndpoint, "ecs-endpoint", os.Getenv("ALIBABA_CLOUD_ECS_ENDPOINT"), "ecs: ECS OpenAPI endpoint, a host or URL, e.g. ecs-vpc.cn-hangzhou.aliyuncs.com (default: the region's public endpoint; env ALIBABA_CLOUD_ECS_ENDPOINT)")
	fs.StringVar(&o.CredentialsFile, "credentials-file", "", "ecs: file or Secret directory with ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET (and SECURITY_TOKEN); re-read when it changes")
	fs.StringVar(&o.RAMRole, "ram-role", "", "ecs: RAM role to take from instance metadata (default: the one attached to the instance)")
	fs.BoolVar(&o.SerialLessFallback, "serialless-fallback", false, "ecs: identify local disks that have no serial (instances created before mid-2020) by name from --device-start-with and the instance type's disk count, pinning each at first use; see the README for the risks")
	fs.StringVar(&o.DeviceStartWith, "device-start-with", "", "ecs with --serialless-fallback: name of the first local disk (default vdb)")
	fs.BoolVar(&o.AllowNoDisks, "allow-no-disks", false, "static: be ready even when a --devices entry matches no device at the node's first start (a node expected to have no local disks); without it the driver reports the entry and stays not ready")
	fs.StringVar(&o.CleanupMaxRate, "cleanup-max-rate", "", "largest write rate of a zero or shred cleanup, and of the zeroing before a raw hand-out, per disk, in bytes per second with an optional Ki, Mi or Gi suffix, e.g. 200Mi (default: no cap)")
	fs.DurationVar(&o.CleanupCheckpointInterval, "cleanup-checkpoint-interval", 10*time.Second, "how often a zero or shred cleanup records its progress in the node state; a restarted driver goes on from the last record")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig of the Kubernetes API, for the LocalDisk objects and events (default: the pod's service account when run in a cluster; outside one, without this flag, neither is written)")
	fs.Float64Var(&o.KubeAPIQPS, "kube-api-qps", 5, "queries per second to the Kubernetes API")
	fs.IntVar(&o.KubeAPIBurst, "kube-api-burst", 10, "burst of queries to the Kubernetes API")
	fs.DurationVar(&o.DiskRescanInterval, "disk-rescan-interval", 30*time.Second, "how often the node's disks are discovered again (disks added, gone or changed)")
	fs.StringVar(&o.MetricsAddress, "metrics-address", "", "serve Prometheus metrics at http://<address>/metrics, e.g. :9809 or 127.0.0.1:9809 (default: off)")
	fs.BoolVar(&o.Version, "version", false, "print the version and the commit, and exit")
}

// Validate reports every problem with the options at once.
func (o *Options) Validate() error {
	var errs []error
	if !strings.HasPrefix(o.Endpoint, "unix://") && !strings.HasPrefix(o.Endpoint, "unix:/") && !strings.HasPrefix(o.Endpoint, "tcp://") {
		errs = append(errs, fmt.Errorf("--endpoint %q must start with unix:// (or tcp:// for tests)", o.Endpoint))
	}
	if o.NodeID == "" {
		errs = append(errs, errors.New("--node-id is required (or set NODE_NAME)"))
	} else if !inventory.ValidNodeID(o.NodeID) {
		errs = append(errs, fmt.Errorf("--node-id %q is not a valid node name (letters, digits, '.', '_' and '-', starting and ending with a letter or digit; at most 253)", o.NodeID))
	}
	if o.DriverName == "" || strings.ContainsAny(o.DriverName, "/ ") {
		errs = append(errs, fmt.Errorf("--driver-name %q is not a valid CSI driver name", o.DriverName))
	}
	if !filepath.IsAbs(o.StateDir) {
		errs = append(errs, fmt.Errorf("--state-dir %q must be an absolute path", o.StateDir))
	}
	if _, err := o.CleanupBytesPerSecond(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, checkHostPort("--metrics-address", o.MetricsAddress, ":9809"), checkRates(o.KubeAPIQPS, o.KubeAPIBurst))
	if o.DiskRescanInterval < time.Second {
		errs = append(errs, fmt.Errorf("--disk-rescan-interval %v must be at least 1s", o.DiskRescanInterval))
	}
	if o.CleanupCheckpointInterval < time.Second {
		errs = append(errs, fmt.Errorf("--cleanup-checkpoint-interval %v must be at least 1s", o.CleanupCheckpointInterval))
	}
	switch o.DiskSource {
	case "static":
		if len(o.DevicePatterns()) == 0 {
			errs = append(errs, errors.New("--disk-source=static needs --devices"))
		}
		for _, p := range o.DevicePatterns() {
			if !filepath.IsAbs(p) {
				errs = append(errs, fmt.Errorf("--devices entry %q must be an absolute path or glob", p))
			} else if _, err := filepath.Match(p, p); err != nil {
				errs = append(errs, fmt.Errorf("--devices entry %q: %v", p, err))
			}
		}
		if o.SerialLessFallback {
			errs = append(errs, errors.New("--serialless-fallback only applies to --disk-source=ecs"))
		}
		for name, v := range map[string]string{"--metadata-endpoint": o.MetadataEndpoint, "--ecs-endpoint": o.ECSEndpoint, "--credentials-file": o.CredentialsFile, "--ram-role": o.RAMRole, "--device-start-with": o.DeviceStartWith} {
			if v != "" {
				errs = append(errs, fmt.Errorf("%s only applies to --disk-source=ecs", name))
			}
		}
	case "ecs":
		for _, p := range o.DevicePatterns() {
			if !filepath.IsAbs(p) {
				errs = append(errs, fmt.Errorf("--devices entry %q must be an absolute path or glob", p))
			}
		}
		if o.AllowNoDisks {
			errs = append(errs, errors.New("--allow-no-disks only applies to --disk-source=static"))
		}
		if o.DeviceStartWith != "" && !o.SerialLessFallback {
			errs = append(errs, errors.New("--device-start-with only applies with --serialless-fallback"))
		}
		if o.DeviceStartWith != "" && !validStart.MatchString(o.DeviceStartWith) {
			errs = append(errs, fmt.Errorf("--device-start-with %q is not a kernel disk name like vdb, xvdb, sdb or loop0", o.DeviceStartWith))
		}
		if o.CredentialsFile != "" && !filepath.IsAbs(o.CredentialsFile) {
			errs = append(errs, fmt.Errorf("--credentials-file %q must be an absolute path", o.CredentialsFile))
		}
	default:
		errs = append(errs, fmt.Errorf("--disk-source %q is not supported (static, ecs)", o.DiskSource))
	}
	return errors.Join(errs...)
}

var validStart = regexp.MustCompile(`^((xvd|vd|sd|hd)[a-z]{1,3}|[a-z]+[0-9]+)$`)

// StartWith is the first fallback device name.
func (o *Options) StartWith() string {
	if o.DeviceStartWith == "" {
		return "vdb"
	}
	return o.DeviceStartWith
}

// CleanupBytesPerSecond parses --cleanup-max-rate; 0 is no cap.
func (o *Options) CleanupBytesPerSecond() (int64, error) {
	v := strings.TrimSpace(o.CleanupMaxRate)
	if v == "" {
		return 0, nil
	}
	shift := 0
	for suffix, s := range map[string]int{"Ki": 10, "Mi": 20, "Gi": 30} {
		if strings.HasSuffix(v, suffix) {
			v, shift = strings.TrimSuffix(v, suffix), s
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("--cleanup-max-rate %q is not a rate in bytes per second like 200Mi, 1Gi or 52428800", o.CleanupMaxRate)
	}
	return n << shift, nil
}

// DevicePatterns splits --devices into its entries.
func (o *Options) DevicePatterns() []string {
	var out []string
	for _, p := range strings.Split(o.Devices, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// checkHostPort fails unless value, when set, is host:port (example shows
// one) for flag.
func checkHostPort(flag, value, example string) error {
	if value == "" {
		return nil
	}
	if _, port, err := net.SplitHostPort(value); err != nil || port == "" {
		return fmt.Errorf("%s %q is not host:port, e.g. %s", flag, value, example)
	}
	return nil
}

// checkRates fails unless the Kubernetes API client's rate and burst are
// positive.
func checkRates(qps float64, burst int) error {
	if qps <= 0 || burst < 1 {
		return fmt.Errorf("--kube-api-qps (%v) and --kube-api-burst (%d) must be positive", qps, burst)
	}
	return nil
}
