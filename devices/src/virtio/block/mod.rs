//! The virtio-blk device (virtio 1.2 §5.2) backed by a raw image or a host block device.
//!
//! [`Block`] implements [`VirtioDevice`]: it offers the feature bits, serves the configuration
//! space ([`config`]) and, on activation, creates one [`BlockQueueHandler`] per queue, each
//! with its own I/O engine (io_uring when available, synchronous otherwise, see [`engine`]).
//! The handlers are driven from outside: the VMM's iothread polls each handler's
//! [`kick_fd`](BlockQueueHandler::kick_fd) and
//! [`completion_fd`](BlockQueueHandler::completion_fd) and calls
//! [`handle_kick`](BlockQueueHandler::handle_kick) /
//! [`handle_completion`](BlockQueueHandler::handle_completion) on the handler obtained from
//! [`Block::handlers`]. With [`Block::set_iothreads`], activation puts each queue on one of
//! the given I/O threads ([`dataplane`]) and a reset takes them off again.

pub mod config;
pub mod counters;
pub mod dataplane;
pub mod engine;
pub mod handler;
pub mod request;
pub mod sync_engine;
pub mod uring_engine;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use config::{BlockConfig, ConfigError, ConfigSpace};
pub use counters::{IoStats, QueueCounters};
pub use engine::{open_engine, DiskImage, EngineChoice, EngineError, IoEngine};
pub use handler::{BlockQueueHandler, HandlerError, HandlerParams};
pub use request::{Request, RequestError, RequestLimits, SECTOR_SIZE};

use crate::virtio::device::{DeviceError, QueuePosition, VirtioDevice, VirtioInterrupt};
use crate::virtio::iothread::{IoThreadError, IoThreadHandle};
use dataplane::QueueSubscriber;
use event_manager::SubscriberId;

/// Errors from creating or activating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The configuration is invalid.
    #[error("invalid block device configuration")]
    Config(#[source] ConfigError),
    /// The backing file could not be opened or an engine could not be created.
    #[error("block backend failure")]
    Engine(#[source] EngineError),
    /// A queue handler could not be created.
    #[error("cannot create a queue handler")]
    Handler(#[source] HandlerError),
    /// A queue could not be put on its I/O thread.
    #[error("cannot serve a queue on its I/O thread")]
    IoThread(#[source] IoThreadError),
}

/// How long a snapshot waits for a queue's in-flight requests to finish.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a block device's I/O counters from any thread.
#[derive(Clone, Debug)]
pub struct IoStatsReader(Vec<Arc<QueueCounters>>);

impl IoStatsReader {
    /// The counters summed over the queues.
    pub fn read(&self) -> IoStats {
        counters::sum(self.0.iter().map(|q| q.as_ref()))
    }

    /// Requests completed by each queue, in queue order.
    pub fn queue_requests(&self) -> Vec<u64> {
        self.0.iter().map(|q| q.requests()).collect()
    }
}

/// A virtio-blk device.
pub struct Block {
    config: BlockConfig,
    disk: Arc<DiskImage>,
    limits: RequestLimits,
    config_space: ConfigSpace,
    queue_sizes: Vec<u16>,
    avail_features: u64,
    acked_features: u64,
    writeback: Arc<AtomicBool>,
    handlers: Vec<Arc<Mutex<BlockQueueHandler>>>,
    counters: Vec<Arc<QueueCounters>>,
    name: String,
    iothreads: Vec<IoThreadHandle>,
    /// How long the I/O threads poll a queue after each event.
    poll: std::time::Duration,
    subscriptions: Vec<(IoThreadHandle, SubscriberId)>,
}

fn bit(b: u32) -> u64 {
    1u64 << b
}

impl Block {
    /// Validates `config` and opens the backing file.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        config.validate().map_err(BlockError::Config)?;
        let disk = DiskImage::open(&config.path, config.readonly, config.direct)
            .map_err(BlockError::Engine)?;
        if config.lock {
            disk.lock(&config.path).map_err(BlockError::Engine)?;
        }
        let capacity = disk.size() / SECTOR_SIZE;
        let limits = config.limits(capacity);
        let mut avail_features = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_TOPOLOGY)
            | bit(VIRTIO_BLK_F_CONFIG_WCE);
        if config.readonly {
            avail_features |= bit(VIRTIO_BLK_F_RO);
        } else {
            avail_features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        if config.num_queues > 1 {
            avail_features |= bit(VIRTIO_BLK_F_MQ);
        }
        Ok(Block {
            config_space: ConfigSpace::new(&limits, config.num_queues),
            queue_sizes: vec![config.queue_size; usize::from(config.num_queues)],
            disk: Arc::new(disk),
            limits,
            avail_features,
            acked_features: 0,
            writeback: Arc::new(AtomicBool::new(true)),
            handlers: Vec::new(),
            counters: (0..config.num_queues)
                .map(|_| Arc::new(QueueCounters::default()))
                .collect(),
            name: config.path.display().to_string(),
            iothreads: Vec::new(),
            poll: std::time::Duration::ZERO,
            subscriptions: Vec::new(),
            config,
        })
    }

    /// Serves queue `i` on `iothreads[i % iothreads.len()]` from the next activation on;
    /// `name` (the disk's ID) labels log lines. Without I/O threads the caller drives the
    /// handlers itself.
    pub fn set_iothreads(&mut self, name: &str, iothreads: Vec<IoThreadHandle>) {
        self.name = name.to_string();
        self.iothreads = iothreads;
    }

    /// How long the I/O threads keep looking at a queue after each event (zero: they wait
    /// for the next event at once); applies from the next activation on.
    pub fn set_poll_window(&mut self, window: std::time::Duration) {
        self.poll = window;
    }

    /// A reader for the device's I/O counters (all queues, across resets).
    pub fn io_stats_reader(&self) -> IoStatsReader {
        IoStatsReader(self.counters.clone())
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.limits.capacity
    }

    /// Features accepted by the driver.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Queue handlers created by [`activate`](VirtioDevice::activate), one per queue, for the
    /// iothread to drive. Empty before activation and after a reset.
    pub fn handlers(&self) -> &[Arc<Mutex<BlockQueueHandler>>] {
        &self.handlers
    }

    /// Name of the I/O engine of the first queue (`"io_uring"` or `"sync"`), once activated.
    pub fn engine_name(&self) -> Option<&'static str> {
        self.handlers.first().map(|h| lock(h).engine_name())
    }

    fn acked(&self, b: u32) -> bool {
        self.acked_features & bit(b) != 0
    }

    /// Whether completed writes may sit in a volatile cache (writeback mode). Without
    /// `VIRTIO_BLK_F_FLUSH` the device must be write-through.
    fn update_writeback(&self) {
        let wb = self.acked(VIRTIO_BLK_F_FLUSH) && self.config_space.writeback() != 0;
        self.writeback.store(wb, Ordering::Release);
    }

    /// Puts every handler on its I/O thread; on failure takes the ones added off again.
    fn subscribe(&mut self, handlers: &[Arc<Mutex<BlockQueueHandler>>]) -> Result<(), BlockError> {
        if self.iothreads.is_empty() {
            return Ok(());
        }
        for (i, h) in handlers.iter().enumerate() {
            let thread = &self.iothreads[i % self.iothreads.len()];
            let subscriber = QueueSubscriber::new(
                format!("{} queue {i}", self.name),
                h.clone(),
                thread.poll_group(),
                self.poll,
            );
            match thread.add(Box::new(subscriber)) {
                Ok(id) => self.subscriptions.push((thread.clone(), id)),
                Err(e) => {
                    self.unsubscribe();
                    return Err(BlockError::IoThread(e));
                }
            }
        }
        Ok(())
    }

    /// Takes every handler off its I/O thread (waiting until the thread lets go of it).
    fn unsubscribe(&mut self) {
        for (thread, id) in self.subscriptions.drain(..) {
            if let Err(e) = thread.remove(id) {
                log::error!("virtio-blk {}: {e}", self.name);
            }
        }
    }

    fn build_handlers(
        &self,
        mem: GuestMemoryMmap,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<Vec<Arc<Mutex<BlockQueueHandler>>>, BlockError> {
        let event_idx = self.acked(VIRTIO_RING_F_EVENT_IDX);
        let mut handlers = Vec::with_capacity(queues.len());
        for (i, (mut queue, kick)) in queues.into_iter().enumerate() {
            queue.set_event_idx(event_idx);
            let depth = u32::from(queue.size());
            let engine = open_engine(self.disk.clone(), depth, self.config.engine)
                .map_err(BlockError::Engine)?;
            let params = HandlerParams {
                queue_index: u16::try_from(i).unwrap_or(u16::MAX),
                mem: mem.clone(),
                kick,
                interrupt: interrupt.clone(),
                limits: self.limits,
                serial: self.config.serial_bytes(),
                writeback: self.writeback.clone(),
                counters: self.counters.get(i).cloned().unwrap_or_default(),
            };
            let h = BlockQueueHandler::new(queue, engine, params).map_err(BlockError::Handler)?;
            handlers.push(Arc::new(Mutex::new(h)));
        }
        Ok(handlers)
    }
}

/// Locks a handler, recovering from a poisoned mutex (the handler state stays consistent:
/// every method leaves it valid at each step).
pub fn lock(h: &Mutex<BlockQueueHandler>) -> MutexGuard<'_, BlockQueueHandler> {
    h.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
        if !self.acked(VIRTIO_BLK_F_FLUSH) {
            // virtio 1.2 §5.2.5: without FLUSH, writeback must read as 0.
            self.config_space.set_writeback(0);
        }
        self.update_writeback();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config_space.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == config::WRITEBACK_OFFSET
            && data.len() == 1
            && self.acked(VIRTIO_BLK_F_CONFIG_WCE)
        {
            self.config_space.set_writeback(u8::from(data[0] != 0));
            self.update_writeback();
        } else {
            log::debug!(
                "virtio-blk: ignored config write at {offset:#x} ({} bytes)",
                data.len()
            );
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), DeviceError> {
        if !self.handlers.is_empty() {
            return Err(DeviceError::AlreadyActivated);
        }
        if queues.is_empty() || queues.len() > self.queue_sizes.len() {
            return Err(DeviceError::QueueCount {
                got: queues.len(),
                max: self.queue_sizes.len(),
            });
        }
        for (i, (q, _)) in queues.iter().enumerate() {
            if !q.is_valid(&mem) || q.size() > self.config.queue_size {
                return Err(DeviceError::InvalidQueue(i));
            }
        }
        self.update_writeback();
        let handlers = self
            .build_handlers(mem, queues, interrupt)
            .map_err(|e| DeviceError::Activate(Box::new(e)))?;
        if let Err(e) = self.subscribe(&handlers) {
            for h in &handlers {
                lock(h).shutdown();
            }
            return Err(DeviceError::Activate(Box::new(e)));
        }
        if let Some(h) = handlers.first() {
            log::info!(
                "virtio-blk {}: {} queue(s), {} I/O engine",
                self.name,
                handlers.len(),
                lock(h).engine_name()
            );
        }
        self.handlers = handlers;
        Ok(())
    }

    fn quiesce(&mut self) -> Result<Vec<QueuePosition>, DeviceError> {
        self.unsubscribe();
        let mut positions = Vec::with_capacity(self.handlers.len());
        for h in &self.handlers {
            let settled = lock(h).settle(SETTLE_LIMIT);
            match settled {
                Ok(p) => positions.push(p),
                Err(e) => {
                    // Serve the queues again rather than leave the device stopped.
                    let handlers = self.handlers.clone();
                    if let Err(again) = self.subscribe(&handlers) {
                        log::error!("virtio-blk {}: {again}", self.name);
                    }
                    return Err(DeviceError::Quiesce(Box::new(e)));
                }
            }
        }
        Ok(positions)
    }

    fn unquiesce(&mut self) -> Result<(), DeviceError> {
        if !self.subscriptions.is_empty() {
            return Ok(());
        }
        let handlers = self.handlers.clone();
        self.subscribe(&handlers)
            .map_err(|e| DeviceError::Quiesce(Box::new(e)))
    }

    fn driver_config(&self) -> Vec<(u64, Vec<u8>)> {
        if self.acked(VIRTIO_BLK_F_CONFIG_WCE) {
            vec![(
                config::WRITEBACK_OFFSET,
                vec![self.config_space.writeback()],
            )]
        } else {
            Vec::new()
        }
    }

    fn reset(&mut self) -> Result<(), DeviceError> {
        self.unsubscribe();
        for h in self.handlers.drain(..) {
            lock(&h).shutdown();
        }
        self.acked_features = 0;
        self.config_space.set_writeback(1);
        self.writeback.store(true, Ordering::Release);
        Ok(())
    }
}
