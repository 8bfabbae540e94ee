package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// API limits.
const (
	// maxResponseBytes bounds a response body read from the API socket;
	// Firecracker's answers are small JSON objects.
	maxResponseBytes = 64 << 10
	// apiCallTimeout bounds one API call that the caller gave no deadline;
	// snapshot create and load of a large guest take longer and get
	// snapshotCallTimeout.
	apiCallTimeout      = 10 * time.Second
	snapshotCallTimeout = 5 * time.Minute
)

// APIError is a Firecracker API call that did not succeed: a status other
// than the one the endpoint promises, with Firecracker's fault message.
type APIError struct {
	Method, Path string
	Status       int
	// Fault is the "fault_message" of the body, or the body itself when it
	// is not Firecracker's error JSON.
	Fault string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker API %s %s: HTTP %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), e.Fault)
}

// Client calls Firecracker's REST API over its Unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the API socket at path. The socket need not
// exist yet.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		// One VMM, one socket: a single idle connection is all that helps.
		MaxIdleConns:        1,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr}}
}

// Close releases the client's idle connection.
func (c *Client) Close() {
	c.http.CloseIdleConnections()
}

// call sends body (nil for none) as JSON and decodes a successful answer
// into out (nil to ignore it). want is the success status the endpoint
// documents: 204 for PUT and PATCH, 200 for GET.
func (c *Client) call(ctx context.Context, method, path string, body any, want int, out any, timeout time.Duration) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker API %s %s: encode request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	// The host part is ignored: DialContext always reaches the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://firecracker"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker API %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker API %s %s on %s: %w", method, path, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("firecracker API %s %s: read response: %w", method, path, err)
	}
	if len(data) > maxResponseBytes {
		return fmt.Errorf("firecracker API %s %s: response larger than %d bytes", method, path, maxResponseBytes)
	}
	if resp.StatusCode != want {
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, Fault: faultMessage(data)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker API %s %s: decode response %q: %w", method, path, truncate(string(data)), err)
		}
	}
	return nil
}

func faultMessage(body []byte) string {
	var e struct {
		FaultMessage string `json:"fault_message"`
	}
	if json.Unmarshal(body, &e) == nil && e.FaultMessage != "" {
		return e.FaultMessage
	}
	if s := strings.TrimSpace(string(body)); s != "" {
		return truncate(s)
	}
	return "(no body)"
}

// maxQuote bounds how much of a response an error quotes.
const maxQuote = 256

func truncate(s string) string {
	if len(s) > maxQuote {
		return s[:maxQuote] + "…"
	}
	return s
}

// MachineConfig is the body of PUT /machine-config.
type MachineConfig struct {
	VCPUCount  int  `json:"vcpu_count"`
	MemSizeMiB int  `json:"mem_size_mib"`
	SMT        bool `json:"smt"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

// Vsock is the body of PUT /vsock.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// SnapshotCreate is the body of PUT /snapshot/create.
type SnapshotCreate struct {
	SnapshotType string `json:"snapshot_type"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// MemBackend says where a snapshot's memory comes from.
type MemBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// SnapshotLoad is the body of PUT /snapshot/load.
type SnapshotLoad struct {
	SnapshotPath        string     `json:"snapshot_path"`
	MemBackend          MemBackend `json:"mem_backend"`
	EnableDiffSnapshots bool       `json:"enable_diff_snapshots"`
	ResumeVM            bool       `json:"resume_vm"`
}

// InstanceInfo is the answer of GET /.
type InstanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

// PutMachineConfig sets vCPUs and memory (pre-boot).
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.call(ctx, http.MethodPut, "/machine-config", m, http.StatusNoContent, nil, apiCallTimeout)
}

// PutBootSource sets the kernel, initrd and command line (pre-boot).
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.call(ctx, http.MethodPut, "/boot-source", b, http.StatusNoContent, nil, apiCallTimeout)
}

// PutDrive attaches a block device (pre-boot).
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	if d.DriveID == "" || strings.ContainsAny(d.DriveID, "/?#") {
		return fmt.Errorf("firecracker API: drive id %q: want a non-empty id without '/', '?' or '#'", d.DriveID)
	}
	return c.call(ctx, http.MethodPut, "/drives/"+d.DriveID, d, http.StatusNoContent, nil, apiCallTimeout)
}

// PutVsock attaches the vsock device (pre-boot).
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.call(ctx, http.MethodPut, "/vsock", v, http.StatusNoContent, nil, apiCallTimeout)
}

// StartInstance boots the configured microVM.
func (c *Client) StartInstance(ctx context.Context) error {
	return c.call(ctx, http.MethodPut, "/actions", map[string]string{"action_type": "InstanceStart"}, http.StatusNoContent, nil, apiCallTimeout)
}

// PauseVM stops the vCPUs.
func (c *Client) PauseVM(ctx context.Context) error {
	return c.call(ctx, http.MethodPatch, "/vm", map[string]string{"state": "Paused"}, http.StatusNoContent, nil, apiCallTimeout)
}

// ResumeVM restarts the vCPUs.
func (c *Client) ResumeVM(ctx context.Context) error {
	return c.call(ctx, http.MethodPatch, "/vm", map[string]string{"state": "Resumed"}, http.StatusNoContent, nil, apiCallTimeout)
}

// CreateSnapshot writes a full snapshot of a paused microVM.
func (c *Client) CreateSnapshot(ctx context.Context, s SnapshotCreate) error {
	return c.call(ctx, http.MethodPut, "/snapshot/create", s, http.StatusNoContent, nil, snapshotCallTimeout)
}

// LoadSnapshot loads a snapshot into a fresh Firecracker process.
func (c *Client) LoadSnapshot(ctx context.Context, s SnapshotLoad) error {
	return c.call(ctx, http.MethodPut, "/snapshot/load", s, http.StatusNoContent, nil, snapshotCallTimeout)
}

// Instance returns the microVM's information, including the VMM version.
func (c *Client) Instance(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.call(ctx, http.MethodGet, "/", nil, http.StatusOK, &info, apiCallTimeout)
	return info, err
}

// Version returns Firecracker's version ("1.7.0").
func (c *Client) Version(ctx context.Context) (string, error) {
	var v struct {
		Version string `json:"firecracker_version"`
	}
	if err := c.call(ctx, http.MethodGet, "/version", nil, http.StatusOK, &v, apiCallTimeout); err != nil {
		return "", err
	}
	if v.Version == "" {
		return "", errors.New("firecracker API GET /version: no firecracker_version in the answer")
	}
	return v.Version, nil
}
