//! Read coalescing: which requests read a device's properties.
//!
//! Properties of one table are sorted by address and merged into one request
//! while the merged span stays within the limit (125 registers, 2000 coils, or
//! less if the device says so) and the unused gap between two properties is
//! at most `max_gap`. Pure and unit-tested on its own.

use ferrite_models::device::Coalesce;
use ferrite_models::model::{ModbusBinding, Table};

/// One read request and the properties it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadBlock {
    /// The table.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Registers or bits to read.
    pub count: u16,
    /// Index into the property list, and offset of the property in the block.
    pub items: Vec<(usize, u16)>,
}

/// Plans the reads for `props` (index, binding).
pub fn plan(props: &[(usize, &ModbusBinding)], limits: &Coalesce) -> Vec<ReadBlock> {
    let mut sorted: Vec<&(usize, &ModbusBinding)> = props.iter().collect();
    sorted.sort_by_key(|(i, b)| (b.table, b.address, *i));
    let mut blocks: Vec<ReadBlock> = Vec::new();
    for (index, binding) in sorted {
        let width = binding.width();
        let start = u32::from(binding.address);
        let end = start + width;
        let max = u32::from(if binding.table.is_bits() {
            limits.max_bits
        } else {
            limits.max_registers
        });
        if let Some(block) = blocks.last_mut() {
            let block_start = u32::from(block.start);
            let block_end = block_start + u32::from(block.count);
            let merged_end = block_end.max(end);
            let fits = block.table == binding.table
                && start <= block_end + u32::from(limits.max_gap)
                && merged_end - block_start <= max;
            if fits {
                block.count = u16::try_from(merged_end - block_start).unwrap_or(u16::MAX);
                block
                    .items
                    .push((*index, u16::try_from(start - block_start).unwrap_or(0)));
                continue;
            }
        }
        blocks.push(ReadBlock {
            table: binding.table,
            start: binding.address,
            count: u16::try_from(width).unwrap_or(u16::MAX),
            items: vec![(*index, 0)],
        });
    }
    for block in &mut blocks {
        block.items.shrink_to_fit();
    }
    blocks
}

#[cfg(test)]
mod tests {
    use ferrite_models::model::Format;

    use super::*;

    fn b(table: Table, address: u16, format: Format) -> ModbusBinding {
        ModbusBinding {
            table,
            address,
            format: Some(format),
            order: None,
            bit: None,
            scale: None,
            offset: None,
        }
    }

    #[test]
    fn neighbours_merge_and_gaps_split() {
        let bindings = [
            b(Table::Holding, 0, Format::U16),
            b(Table::Holding, 1, Format::F32),
            b(Table::Holding, 10, Format::U16),
            b(Table::Input, 0, Format::U16),
            b(Table::Coil, 5, Format::Bool),
            b(Table::Coil, 6, Format::Bool),
        ];
        let props: Vec<(usize, &ModbusBinding)> = bindings.iter().enumerate().collect();
        let blocks = plan(&props, &Coalesce::default());
        let shape: Vec<(Table, u16, u16)> =
            blocks.iter().map(|b| (b.table, b.start, b.count)).collect();
        assert_eq!(
            shape,
            vec![
                (Table::Coil, 5, 2),
                (Table::Input, 0, 1),
                (Table::Holding, 0, 3),
                (Table::Holding, 10, 1)
            ]
        );
        assert_eq!(blocks[2].items, vec![(0, 0), (1, 1)]);
        // With a gap allowance, the holding registers become one read.
        let gappy = Coalesce {
            max_gap: 7,
            ..Coalesce::default()
        };
        assert_eq!(plan(&props, &gappy).len(), 3);
    }

    #[test]
    fn blocks_respect_the_size_limits() {
        let bindings: Vec<ModbusBinding> = (0..300)
            .map(|i| b(Table::Holding, i, Format::U16))
            .collect();
        let props: Vec<(usize, &ModbusBinding)> = bindings.iter().enumerate().collect();
        let blocks = plan(&props, &Coalesce::default());
        assert_eq!(
            blocks.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![125, 125, 50]
        );
        let small = Coalesce {
            max_registers: 10,
            ..Coalesce::default()
        };
        assert_eq!(plan(&props, &small).len(), 30);
        // Two bits of one register share it.
        let mut x = b(Table::Holding, 3, Format::U16);
        x.bit = Some(1);
        let mut y = x.clone();
        y.bit = Some(2);
        let pair = [(0, &x), (1, &y)];
        let blocks = plan(&pair, &Coalesce::default());
        assert_eq!((blocks.len(), blocks[0].count), (1, 1));
    }
}
