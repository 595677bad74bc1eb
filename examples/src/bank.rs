//! Register banks, and the Modbus service that answers from them.

use std::collections::{HashMap, VecDeque};
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ferrite_models::codec::Encoded;
use ferrite_models::model::{ModbusBinding, Table};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// One unit's four tables. Sparse: unset addresses read as zero.
#[derive(Debug, Default, Clone)]
pub struct Bank {
    /// Coils.
    pub coils: HashMap<u16, bool>,
    /// Discrete inputs.
    pub discrete: HashMap<u16, bool>,
    /// Input registers.
    pub input: HashMap<u16, u16>,
    /// Holding registers.
    pub holding: HashMap<u16, u16>,
}

impl Bank {
    /// Stores an encoded value at a binding's address.
    pub fn put(&mut self, b: &ModbusBinding, encoded: &Encoded) {
        match encoded {
            Encoded::Coil(on) => self.set_bits(b.table, b.address, &[*on]),
            Encoded::Registers(values) => self.set_registers(b.table, b.address, values),
            Encoded::Bit { bit, on } => {
                let reg = self.register_table(b.table).entry(b.address).or_default();
                let mask = 1u16 << bit;
                *reg = if *on { *reg | mask } else { *reg & !mask };
            }
        }
    }

    /// Sets registers from `start`: input registers for `Table::Input`,
    /// holding registers otherwise.
    pub fn set_registers(&mut self, table: Table, start: u16, values: &[u16]) {
        let t = self.register_table(table);
        for (i, v) in values.iter().enumerate() {
            t.insert(start.wrapping_add(i as u16), *v);
        }
    }

    /// Sets bits from `start`: discrete inputs for `Table::Discrete`, coils
    /// otherwise.
    pub fn set_bits(&mut self, table: Table, start: u16, values: &[bool]) {
        let t = if table == Table::Discrete {
            &mut self.discrete
        } else {
            &mut self.coils
        };
        for (i, on) in values.iter().enumerate() {
            t.insert(start.wrapping_add(i as u16), *on);
        }
    }

    fn register_table(&mut self, table: Table) -> &mut HashMap<u16, u16> {
        if table == Table::Input {
            &mut self.input
        } else {
            &mut self.holding
        }
    }

    /// The registers of a binding, as a client would read them.
    pub fn registers(&self, table: Table, start: u16, count: u16) -> Vec<u16> {
        let t = if table == Table::Input {
            &self.input
        } else {
            &self.holding
        };
        (0..count)
            .map(|i| t.get(&start.wrapping_add(i)).copied().unwrap_or(0))
            .collect()
    }

    /// Bits, as a client would read them.
    pub fn bits(&self, table: Table, start: u16, count: u16) -> Vec<bool> {
        let t = if table == Table::Discrete {
            &self.discrete
        } else {
            &self.coils
        };
        (0..count)
            .map(|i| t.get(&start.wrapping_add(i)).copied().unwrap_or(false))
            .collect()
    }
}

/// A misbehaviour to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Never answer.
    Silent,
    /// Answer every request with this exception.
    Exception(ExceptionCode),
    /// Answer normally, but this much later (a slow unit behind a gateway,
    /// whose answers come after the client has given up).
    Late(Duration),
}

/// One unit id: its bank and its fault.
#[derive(Debug, Default)]
pub struct Unit {
    /// Registers and coils.
    pub bank: Bank,
    /// Injected fault.
    pub fault: Fault,
}

/// A request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// Unit id.
    pub unit: u8,
    /// Function code.
    pub function: u8,
    /// First address.
    pub address: u16,
    /// Registers or coils involved.
    pub count: u16,
}

/// Everything behind one endpoint (a TCP port or a serial bus).
#[derive(Debug, Default)]
pub struct Endpoint {
    units: Mutex<HashMap<u8, Unit>>,
    seen: Mutex<VecDeque<Seen>>,
    requests: AtomicU64,
    connections: AtomicU64,
    /// Added to every answer, to make request overlap measurable.
    delay: Mutex<Duration>,
    /// Behave as a TCP gateway (unknown unit → exception 0x0B) rather than a
    /// serial bus (unknown unit → silence).
    pub gateway: bool,
}

/// How many requests [`Endpoint::seen`] keeps.
pub const SEEN_CAPACITY: usize = 100_000;

impl Endpoint {
    /// An endpoint. `gateway`: see the field.
    pub fn new(gateway: bool) -> Arc<Self> {
        Arc::new(Endpoint {
            gateway,
            ..Endpoint::default()
        })
    }

    /// Counts a connection accepted (by a TCP server over this endpoint).
    pub fn connected(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The units, locked.
    pub fn units(&self) -> MutexGuard<'_, HashMap<u8, Unit>> {
        self.units.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a unit with an empty bank, if it is not there yet.
    pub fn add_unit(&self, unit: u8) {
        self.units().entry(unit).or_default();
    }

    /// Sets a unit's fault.
    pub fn set_fault(&self, unit: u8, fault: Fault) {
        self.units().entry(unit).or_default().fault = fault;
    }

    /// Delays every answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// Requests answered or dropped so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The last requests seen (at most [`SEEN_CAPACITY`]), oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets the requests seen so far.
    pub fn clear_seen(&self) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.requests.store(0, Ordering::Relaxed);
    }

    fn delay(&self) -> Duration {
        *self.delay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The delay before `unit` answers: the endpoint's, plus the unit's own
    /// if it is [`Fault::Late`].
    fn delay_of(&self, unit: u8) -> Duration {
        let late = match self.units().get(&unit).map(|u| u.fault) {
            Some(Fault::Late(by)) => by,
            _ => Duration::ZERO,
        };
        self.delay() + late
    }

    /// Answers one request. `None` means no answer at all.
    pub fn answer(
        &self,
        unit: u8,
        request: &Request<'_>,
    ) -> Result<Option<Response>, ExceptionCode> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (function, address, count) = describe(request);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.len() == SEEN_CAPACITY {
                seen.pop_front();
            }
            seen.push_back(Seen {
                at: Instant::now(),
                unit,
                function,
                address,
                count,
            });
        }
        let mut units = self.units();
        let Some(u) = units.get_mut(&unit) else {
            return if self.gateway {
                Err(ExceptionCode::GatewayTargetDevice)
            } else {
                Ok(None)
            };
        };
        match u.fault {
            Fault::Silent => return Ok(None),
            Fault::Exception(code) => return Err(code),
            Fault::None | Fault::Late(_) => {}
        }
        let bank = &mut u.bank;
        let limit = |count: u16, max: u16| {
            if count == 0 || count > max || u32::from(address) + u32::from(count) > 65536 {
                Err(ExceptionCode::IllegalDataAddress)
            } else {
                Ok(())
            }
        };
        let response = match request {
            Request::ReadCoils(a, n) => {
                limit(*n, 2000)?;
                Response::ReadCoils(bank.bits(Table::Coil, *a, *n))
            }
            Request::ReadDiscreteInputs(a, n) => {
                limit(*n, 2000)?;
                Response::ReadDiscreteInputs(bank.bits(Table::Discrete, *a, *n))
            }
            Request::ReadInputRegisters(a, n) => {
                limit(*n, 125)?;
                Response::ReadInputRegisters(bank.registers(Table::Input, *a, *n))
            }
            Request::ReadHoldingRegisters(a, n) => {
                limit(*n, 125)?;
                Response::ReadHoldingRegisters(bank.registers(Table::Holding, *a, *n))
            }
            Request::WriteSingleCoil(a, on) => {
                bank.set_bits(Table::Coil, *a, &[*on]);
                Response::WriteSingleCoil(*a, *on)
            }
            Request::WriteMultipleCoils(a, values) => {
                limit(values.len() as u16, 1968)?;
                bank.set_bits(Table::Coil, *a, values);
                Response::WriteMultipleCoils(*a, values.len() as u16)
            }
            Request::WriteSingleRegister(a, v) => {
                bank.set_registers(Table::Holding, *a, &[*v]);
                Response::WriteSingleRegister(*a, *v)
            }
            Request::WriteMultipleRegisters(a, values) => {
                limit(values.len() as u16, 123)?;
                bank.set_registers(Table::Holding, *a, values);
                Response::WriteMultipleRegisters(*a, values.len() as u16)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        Ok(Some(response))
    }
}

fn describe(request: &Request<'_>) -> (u8, u16, u16) {
    match request {
        Request::ReadCoils(a, n) => (1, *a, *n),
        Request::ReadDiscreteInputs(a, n) => (2, *a, *n),
        Request::ReadHoldingRegisters(a, n) => (3, *a, *n),
        Request::ReadInputRegisters(a, n) => (4, *a, *n),
        Request::WriteSingleCoil(a, _) => (5, *a, 1),
        Request::WriteSingleRegister(a, _) => (6, *a, 1),
        Request::WriteMultipleCoils(a, v) => (15, *a, v.len() as u16),
        Request::WriteMultipleRegisters(a, v) => (16, *a, v.len() as u16),
        _ => (0, 0, 0),
    }
}

/// The tokio-modbus service over an [`Endpoint`].
#[derive(Clone)]
pub struct Service {
    endpoint: Arc<Endpoint>,
}

impl Service {
    /// A service answering from `endpoint`.
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        Service { endpoint }
    }
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let answer = self.endpoint.answer(req.slave, &req.request);
        let delay = self.endpoint.delay_of(req.slave);
        if delay.is_zero() {
            let ready: Ready<Answer> = ready(answer);
            Box::pin(ready)
        } else {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                answer
            })
        }
    }
}
