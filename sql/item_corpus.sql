-- Item corpus for the item tower and the faiss index: one row per clean item of :ds, with the
-- text the models read (title, category path, brand, tags) joined by ' | '.
-- Input (a DataFrame passed to spark.sql by keyword): items (clean items of :ds).
SELECT item_id,
       concat_ws(' | ',
                 title,
                 category_path,
                 brand,
                 CASE WHEN size(tags) > 0 THEN array_join(tags, ' ') END) AS text,
       title,
       leaf_category,
       brand,
       image_embedding
FROM {items}
WHERE item_id IS NOT NULL
