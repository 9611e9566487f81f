//! A blocking client of containerd's CRI plugin (Kubernetes' runtime service, `runtime.v1`)
//! over containerd's socket, as a kubelet drives it: the tests' stand-in for a kubelet.

use std::path::Path;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one call may take: a sandbox's VM boots in it, which takes a few seconds in the
/// nested test host.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// How long the CRI plugin gets to answer `Status` as ready after containerd starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to the CRI plugin's runtime service.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

macro_rules! rpc {
    ($(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty) => {
        $(#[$doc])*
        pub fn $name(&mut self, req: $req) -> Result<$resp, String> {
            let mut request = tonic::Request::new(req);
            request.set_timeout(CALL_TIMEOUT);
            self.rt
                .block_on(self.client.$name(request))
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    };
}

impl Cri {
    /// Connects to containerd's socket at `socket`; panics if it cannot.
    pub fn connect(socket: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(
                Endpoint::from_static("http://[::]:50051").connect_with_connector(
                    tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }),
                ),
            )
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        Self {
            rt,
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// Waits until the runtime reports its `RuntimeReady` condition (the CRI plugin starts
    /// after containerd's socket is up); the last status or error if it does not in time.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match self.status(StatusRequest { verbose: false }) {
                Ok(resp) => {
                    let conditions = resp.status.map(|s| s.conditions).unwrap_or_default();
                    let ready = conditions
                        .iter()
                        .any(|c| c.r#type == "RuntimeReady" && c.status);
                    if ready {
                        return Ok(());
                    }
                    format!("{conditions:?}")
                }
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(last);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    rpc!(
        /// `Status`.
        status(StatusRequest) -> StatusResponse
    );
    rpc!(
        /// `RunPodSandbox`.
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse
    );
    rpc!(
        /// `StopPodSandbox`.
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse
    );
    rpc!(
        /// `RemovePodSandbox`.
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse
    );
    rpc!(
        /// `CreateContainer`.
        create_container(CreateContainerRequest) -> CreateContainerResponse
    );
    rpc!(
        /// `StartContainer`.
        start_container(StartContainerRequest) -> StartContainerResponse
    );
    rpc!(
        /// `StopContainer`.
        stop_container(StopContainerRequest) -> StopContainerResponse
    );
    rpc!(
        /// `RemoveContainer`.
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse
    );
    rpc!(
        /// `ContainerStatus`.
        container_status(ContainerStatusRequest) -> ContainerStatusResponse
    );
    rpc!(
        /// `ExecSync`.
        exec_sync(ExecSyncRequest) -> ExecSyncResponse
    );
    rpc!(
        /// `ContainerStats`.
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse
    );
}
