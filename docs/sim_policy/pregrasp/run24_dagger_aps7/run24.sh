# run24: run19 (shipped A) + a DAgger round by run19 rolled out at 7 chunk points per call (the shipped
# setting; 120 episodes, seeds 217000+), then 3000 steps from run19 at lr 1e-4 (absolute frame).
# Rerun to resume (the DAgger step is skipped once its output exists).
set -e
A=artifacts/train_sim_pregrasp
if [ ! -f $A/dataset_pregrasp_dagger19.npz ]; then
  PYTHONPATH=/work/main python -m vla_pruner_ros.training.dagger --checkpoint checkpoints/xarm6_sim_pregrasp \
      --dataset $A/dataset_pregrasp_dagger18.npz --out $A/dataset_pregrasp_dagger19.npz --episodes 120 \
      --first-seed 217000 --expert-probability 0.1 --actions-per-step 7 --no-compress --threads 2 > $A/dagger19.log 2>&1
fi
PYTHONPATH=/work/main python -m vla_pruner_ros.tools.cli train-sim --task pregrasp \
    --dataset $A/dataset_pregrasp_dagger19.npz --init-from checkpoints/xarm6_sim_pregrasp --work-dir $A/run24 \
    --out $A/ckpt_run24 --overwrite --steps 3000 --batch-size 8 --lr 1e-4 --warmup 20 --eval-every 500 \
    --eval-samples 128 --save-every 100 --threads 2 --seed 3
