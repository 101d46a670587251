//! Content values block by block: reading through pages, and editing
//! only the pages a write touches.

use std::collections::HashMap;

use psync_base::ContentHash;

use crate::error::Result;
use crate::records::*;
use crate::store::Store;
use crate::txn::Txn;

#[derive(Default)]
pub(crate) struct PageCache {
    pages: HashMap<u64, Page>,
}

impl PageCache {
    pub(crate) fn block_hash(&mut self, store: &Store, content: &Content, index: u64) -> Result<Option<ContentHash>> {
        let page_index = index / BLOCKS_PER_PAGE;
        let Some(Some(page_hash)) = content.pages.get(page_index as usize) else { return Ok(None) };
        let page = match self.pages.entry(page_index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(store.page(page_hash)?),
        };
        Ok(page.blocks.get((index % BLOCKS_PER_PAGE) as usize).copied().flatten())
    }
}

/// Edits a content value block by block, then writes only the pages it changed.
pub(crate) struct ContentEditor {
    content: Content,
    dirty_pages: HashMap<u64, Page>,
    cache: PageCache,
}

impl ContentEditor {
    pub(crate) fn new(content: Content) -> Self {
        Self { content, dirty_pages: HashMap::new(), cache: PageCache::default() }
    }

    pub(crate) fn block_hash(&mut self, store: &Store, index: u64) -> Result<Option<ContentHash>> {
        let page_index = index / BLOCKS_PER_PAGE;
        if let Some(page) = self.dirty_pages.get(&page_index) {
            return Ok(page.blocks.get((index % BLOCKS_PER_PAGE) as usize).copied().flatten());
        }
        self.cache.block_hash(store, &self.content, index)
    }

    pub(crate) fn page_mut(&mut self, store: &Store, page_index: u64) -> Result<&mut Page> {
        if !self.dirty_pages.contains_key(&page_index) {
            let page = match self.content.pages.get(page_index as usize) {
                Some(Some(hash)) => store.page(hash)?,
                _ => Page::default(),
            };
            self.dirty_pages.insert(page_index, page);
        }
        Ok(self.dirty_pages.entry(page_index).or_default())
    }

    pub(crate) fn set_block(&mut self, store: &Store, index: u64, hash: Option<ContentHash>) -> Result<()> {
        let slot = (index % BLOCKS_PER_PAGE) as usize;
        let page = self.page_mut(store, index / BLOCKS_PER_PAGE)?;
        if page.blocks.len() <= slot {
            page.blocks.resize(slot + 1, None);
        }
        page.blocks[slot] = hash;
        Ok(())
    }

    /// Drops every block at `index` and beyond.
    pub(crate) fn drop_blocks_from(&mut self, store: &Store, index: u64) -> Result<()> {
        let first_page = index / BLOCKS_PER_PAGE;
        let keep_pages = index.div_ceil(BLOCKS_PER_PAGE) as usize;
        self.content.pages.truncate(keep_pages);
        self.dirty_pages.retain(|&p, _| p < keep_pages as u64);
        let slot = (index % BLOCKS_PER_PAGE) as usize;
        if slot != 0 {
            let page = self.page_mut(store, first_page)?;
            page.blocks.truncate(slot);
        }
        Ok(())
    }

    /// Stores the changed pages and returns the new content (size unchanged).
    pub(crate) fn finish(mut self, txn: &mut Txn<'_>) -> Result<Content> {
        let mut indices: Vec<u64> = self.dirty_pages.keys().copied().collect();
        indices.sort_unstable();
        for page_index in indices {
            let Some(mut page) = self.dirty_pages.remove(&page_index) else { continue };
            while page.blocks.last() == Some(&None) {
                page.blocks.pop();
            }
            let slot = page_index as usize;
            if self.content.pages.len() <= slot {
                self.content.pages.resize(slot + 1, None);
            }
            if page.blocks.is_empty() {
                self.content.pages[slot] = None;
                continue;
            }
            self.content.pages[slot] = Some(txn.put_page(&page)?);
        }
        while self.content.pages.last() == Some(&None) {
            self.content.pages.pop();
        }
        Ok(self.content)
    }
}
