//! Modbus responses, as a device (or anything on the wire pretending to be
//! one) sends them: the fuzzer's bytes answer a real tokio-modbus client's
//! read request over TCP or RTU framing, and whatever registers come back
//! are decoded for every property of the fixture model, as the driver does.
#![no_main]

use ferrite_fuzz::fixture;
use ferrite_models::codec::{answered, decode_bit, decode_registers};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::client::Client;
use tokio_modbus::{Request, Response, Slave};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, answer)) = data.split_first() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (client_io, mut device) = tokio::io::duplex(4096);
        let slave = Slave(choice >> 4);
        let mut client = if choice & 1 == 0 {
            tokio_modbus::client::tcp::attach_slave(client_io, slave)
        } else {
            tokio_modbus::client::rtu::attach_slave(client_io, slave)
        };
        let answer = answer.to_vec();
        let device_task = tokio::spawn(async move {
            // Take the request, send the fuzzer's answer, then hang up.
            let mut request = [0u8; 256];
            let _ = device.read(&mut request).await;
            let _ = device.write_all(&answer).await;
            let _ = device.shutdown().await;
        });
        let count = u16::from((choice >> 1) & 0x07) * 4 + 1;
        let request = if choice & 0x08 != 0 {
            Request::ReadCoils(0, count)
        } else {
            Request::ReadHoldingRegisters(0, count)
        };
        // As the driver reads: one call, then the answer's size checked.
        // A partial answer must end in an error once the device hangs up,
        // not in a wait: the time limit catches a hang.
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), client.call(request))
            .await
            .expect("a read over a closed link must end");
        let _ = device_task.await;
        match outcome {
            Ok(Ok(Response::ReadHoldingRegisters(words))) => {
                if let Ok(registers) = answered(words, count, false) {
                    for (_, property) in &fixture().properties {
                        if let Some(binding) = &property.modbus {
                            let _ = decode_registers(binding, property.ty, &registers);
                        }
                    }
                }
            }
            Ok(Ok(Response::ReadCoils(bits))) => {
                if let Ok(bits) = answered(bits, count, true) {
                    for on in bits {
                        let _ = decode_bit(on);
                    }
                }
            }
            // Another response, a Modbus exception or a transport error:
            // each is an answer the driver reports; none may panic.
            _ => {}
        }
    });
});
